"""The access plugin's user table (plugin/overair_access.c: open addressing, linear
probing, backward-shift removal) against a reference, in C: a random sequence of
insertions, replacements and removals of many users, with every lookup checked after
each step. The plugin's source is compiled as it is into a small program; the broker
functions it calls are not used by the table and are given empty definitions."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[2] / "src" / "overair" / "server" / "gateway" / "plugin"

PROGRAM = r"""
#include "overair_access.c"

/* Broker functions the plugin links against; the table never calls them. */
int mosquitto_callback_register(mosquitto_plugin_id_t *a, int b, MOSQ_FUNC_generic_callback c, const void *d,
        void *e){ (void)a; (void)b; (void)c; (void)d; (void)e; return 0; }
int mosquitto_callback_unregister(mosquitto_plugin_id_t *a, int b, MOSQ_FUNC_generic_callback c,
        const void *d){ (void)a; (void)b; (void)c; (void)d; return 0; }
void mosquitto_log_printf(int level, const char *fmt, ...){ (void)level; (void)fmt; }
const char *mosquitto_client_id(const struct mosquitto *c){ (void)c; return ""; }
const char *mosquitto_client_username(const struct mosquitto *c){ (void)c; return ""; }
int mosquitto_set_username(struct mosquitto *c, const char *u){ (void)c; (void)u; return 0; }
int mosquitto_client_protocol_version(const struct mosquitto *c){ (void)c; return 4; }
void *mosquitto_client_certificate(const struct mosquitto *c){ (void)c; return NULL; }
int mosquitto_kick_client_by_username(const char *u, bool w){ (void)u; (void)w; return 0; }
int mosquitto_kick_client_by_clientid(const char *c, bool w){ (void)c; (void)w; return 0; }
int mosquitto_broker_publish(const char *a, const char *b, int c, void *d, int e, bool f,
        mosquitto_property *g){ (void)a; (void)b; (void)c; free(d); (void)e; (void)f; (void)g; return 0; }
void *mosquitto_calloc(size_t n, size_t s){ return calloc(n, s); }
int mosquitto_topic_matches_sub(const char *s, const char *t, bool *r){ *r = !strcmp(s, t); return 0; }

#define N 20000
static bool present[N];

static void name_of(int i, char *out){ sprintf(out, "CN=device-%d,O=overair", i); }

int main(void)
{
    struct rules rules;
    char name[64];
    unsigned seed = 12345;
    memset(&rules, 0, sizeof(rules));
    for(long step = 0; step < 200000; step++){
        int i;
        seed = seed * 1103515245u + 12345u;
        i = (int)((seed >> 8) % N);
        name_of(i, name);
        if((seed >> 4) % 3){
            struct user *user = calloc(1, sizeof(*user));
            struct user *old = user_remove(&rules, name);
            if((old != NULL) != present[i]) return 1;
            user_free(old);
            user->name = strdup(name);
            if(!user_insert(&rules, user)) return 2;
            present[i] = true;
        }else{
            struct user *old = user_remove(&rules, name);
            if((old != NULL) != present[i]) return 3;
            user_free(old);
            present[i] = false;
        }
        if(step % 997 == 0){
            size_t count = 0;
            for(int j = 0; j < N; j++){
                name_of(j, name);
                if((find_user(&rules, name) != NULL) != present[j]) return 4;
                count += present[j];
            }
            if(count != rules.user_count) return 5;
        }
    }
    rules_free(&rules);
    puts("ok");
    return 0;
}
"""


def test_the_user_table_agrees_with_a_reference_through_200000_changes(tmp_path: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None, "scripts/dev installs gcc"
    source = tmp_path / "table_test.c"
    source.write_text(PROGRAM)
    program = tmp_path / "table_test"
    built = subprocess.run([compiler, "-std=c11", "-D_GNU_SOURCE", "-O1", "-Wall", "-Wno-unused-function",
                            f"-I{PLUGIN}", "-o", str(program), str(source), "-lcrypto"],
                           capture_output=True, text=True, timeout=120, check=False)
    assert built.returncode == 0, built.stderr
    ran = subprocess.run([str(program)], capture_output=True, text=True, timeout=120, check=False)
    assert (ran.returncode, ran.stdout.strip()) == (0, "ok"), ran.returncode
