/*
 * overair's access plugin for Mosquitto 2.0 (plugin interface version 5).
 *
 * What Mosquitto 2.0.11 cannot do by configuration, and AWS IoT Core does (measured
 * against Debian bookworm's 2.0.11; docs/compatibility.md, "MQTT"):
 *
 *  - A device chooses its own client id, but only one of its own things' ids: the thing
 *    name, or the thing name followed by a suffix that starts with a character no thing
 *    name may hold (`dev-1`, `dev-1#2`, `dev-1.jobs`). So one certificate may hold
 *    several connections, a duplicate id takes the older session over (MQTT-3.1.4-2),
 *    and no certificate can take over a session of a thing it is not attached to
 *    (threat N4). Ids the server's own identities use are reserved for them.
 *  - A SUBSCRIBE to a filter outside the client's topics is refused in the SUBACK
 *    (0x80 on MQTT 3.1.1, 0x87 on MQTT 5); the built-in acl_file grants every SUBSCRIBE.
 *  - A PUBLISH outside the client's topics closes an MQTT 3.1.1 connection (AWS
 *    disconnects the client) and is answered PUBACK 0x87 on MQTT 5.
 *
 * The client is known by its certificate's whole subject in RFC 2253 form, rendered as
 * Mosquitto's `use_subject_as_username` does; the plugin sets it as the username, so a
 * username the client sends (AWS SDKs send one for metrics) means nothing.
 *
 * The access file (plugin_opt_access_file), rewritten by overair and re-read on every
 * reload (SIGHUP), holds these lines; anything else makes the whole file invalid, and an
 * invalid file grants nothing (fail closed):
 *
 *     # comment
 *     pattern read <topic filter>          every client may read it
 *     user <certificate subject>
 *     topic read|write|readwrite <filter>  the user's grants
 *     thing <thing name>                   the user may use this thing's client ids
 *     clientid <client id>                 an id reserved for this user alone
 *
 * After a reload Mosquitto re-authenticates every session (mosquitto_security_apply), so
 * a certificate that lost its last thing, or that left the file (revoked, inactive), is
 * disconnected there and then.
 */

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

/* AWS IoT Core: "Client ID size: 128 bytes" (AWS IoT Core endpoints and quotas). */
#define MAX_CLIENT_ID 128
#define READ_ACCESS 1
#define WRITE_ACCESS 2

struct grant {
	int access;
	char *filter;
};

struct list {
	char **items;
	size_t count, capacity;
};

struct user {
	char *name;
	struct grant *grants;
	size_t grant_count, grant_capacity;
	struct list things;
	struct list client_ids;
};

struct rules {
	struct user *users;
	size_t user_count, user_capacity;
	struct grant *everyone;
	size_t everyone_count, everyone_capacity;
	struct list reserved; /* every `clientid` of every user */
};

static mosquitto_plugin_id_t *plugin_id;
static char *access_file;
static struct rules current;

static void *grow(void *items, size_t *capacity, size_t count, size_t size)
{
	if(count < *capacity) return items;
	size_t next = *capacity ? *capacity * 2 : 8;
	void *bigger = realloc(items, next * size);
	if(bigger) *capacity = next;
	return bigger;
}

static bool list_add(struct list *list, const char *text)
{
	char **items = grow(list->items, &list->capacity, list->count, sizeof(char *));
	if(!items) return false;
	list->items = items;
	list->items[list->count] = strdup(text);
	return list->items[list->count++] != NULL;
}

static bool list_has(const struct list *list, const char *text)
{
	for(size_t i = 0; i < list->count; i++){
		if(!strcmp(list->items[i], text)) return true;
	}
	return false;
}

static void list_free(struct list *list)
{
	for(size_t i = 0; i < list->count; i++) free(list->items[i]);
	free(list->items);
	memset(list, 0, sizeof(*list));
}

static bool grant_add(struct grant **grants, size_t *count, size_t *capacity, int access, const char *filter)
{
	struct grant *items = grow(*grants, capacity, *count, sizeof(struct grant));
	if(!items) return false;
	*grants = items;
	items[*count].access = access;
	items[*count].filter = strdup(filter);
	return items[(*count)++].filter != NULL;
}

static void rules_free(struct rules *rules)
{
	for(size_t i = 0; i < rules->user_count; i++){
		struct user *user = &rules->users[i];
		free(user->name);
		for(size_t j = 0; j < user->grant_count; j++) free(user->grants[j].filter);
		free(user->grants);
		list_free(&user->things);
		list_free(&user->client_ids);
	}
	free(rules->users);
	for(size_t i = 0; i < rules->everyone_count; i++) free(rules->everyone[i].filter);
	free(rules->everyone);
	list_free(&rules->reserved);
	memset(rules, 0, sizeof(*rules));
}

static int user_compare(const void *a, const void *b)
{
	return strcmp(((const struct user *)a)->name, ((const struct user *)b)->name);
}

static const struct user *find_user(const struct rules *rules, const char *name)
{
	struct user key;
	if(!name || !rules->users) return NULL;
	key.name = (char *)name;
	return bsearch(&key, rules->users, rules->user_count, sizeof(struct user), user_compare);
}

static int parse_access(const char *word)
{
	if(!strcmp(word, "read")) return READ_ACCESS;
	if(!strcmp(word, "write")) return WRITE_ACCESS;
	if(!strcmp(word, "readwrite")) return READ_ACCESS | WRITE_ACCESS;
	return 0;
}

/* One line: words separated by single spaces, as many as its kind takes; false if it is
 * not a line of the access file (so a stray space or newline can never change a rule).
 * Lines after `user` belong to that user, the last one added. */
static bool parse_line(struct rules *rules, char *line)
{
	char *words[4];
	size_t count = 0;
	char *cursor = line;
	struct user *user = rules->user_count ? &rules->users[rules->user_count - 1] : NULL;

	while(true){
		char *space;
		if(count == 3) return false;
		words[count++] = cursor;
		space = strchr(cursor, ' ');
		if(!space) break;
		*space = '\0';
		cursor = space + 1;
	}
	for(size_t i = 0; i < count; i++){
		if(words[i][0] == '\0') return false;
	}
	if(count == 2 && !strcmp(words[0], "user")){
		struct user *users = grow(rules->users, &rules->user_capacity, rules->user_count, sizeof(struct user));
		if(!users) return false;
		rules->users = users;
		user = &users[rules->user_count++];
		memset(user, 0, sizeof(*user));
		user->name = strdup(words[1]);
		return user->name != NULL;
	}
	if(count == 3 && !strcmp(words[0], "pattern")){
		return !strcmp(words[1], "read")
			&& grant_add(&rules->everyone, &rules->everyone_count, &rules->everyone_capacity, READ_ACCESS, words[2]);
	}
	if(!user) return false;
	if(count == 3 && !strcmp(words[0], "topic")){
		int access = parse_access(words[1]);
		return access && grant_add(&user->grants, &user->grant_count, &user->grant_capacity, access, words[2]);
	}
	if(count == 2 && !strcmp(words[0], "thing")) return list_add(&user->things, words[1]);
	if(count == 2 && !strcmp(words[0], "clientid")){
		return list_add(&user->client_ids, words[1]) && list_add(&rules->reserved, words[1]);
	}
	return false;
}

static bool rules_load(const char *path, struct rules *rules)
{
	FILE *file = fopen(path, "r");
	char *line = NULL;
	size_t size = 0;
	ssize_t length;
	long number = 0;
	bool ok = true;

	memset(rules, 0, sizeof(*rules));
	if(!file){
		mosquitto_log_printf(MOSQ_LOG_ERR, "overair access: cannot open %s", path);
		return false;
	}
	while(ok && (length = getline(&line, &size, file)) != -1){
		number++;
		if(length > 0 && line[length - 1] == '\n') line[--length] = '\0';
		if(length == 0 || line[0] == '#') continue;
		if(!parse_line(rules, line)){
			mosquitto_log_printf(MOSQ_LOG_ERR, "overair access: %s line %ld is not valid", path, number);
			ok = false;
		}
	}
	free(line);
	fclose(file);
	if(ok && rules->user_count){
		qsort(rules->users, rules->user_count, sizeof(struct user), user_compare);
		for(size_t i = 1; i < rules->user_count; i++){
			if(!strcmp(rules->users[i - 1].name, rules->users[i].name)){
				mosquitto_log_printf(MOSQ_LOG_ERR, "overair access: %s names a user twice", path);
				ok = false;
			}
		}
	}
	if(!ok) rules_free(rules);
	return ok;
}

/* Does every topic the subscription filter `sub` matches also match `grant`? */
static bool filter_covers(const char *grant, const char *sub)
{
	while(true){
		const char *grant_end = strchr(grant, '/');
		const char *sub_end = strchr(sub, '/');
		size_t grant_len = grant_end ? (size_t)(grant_end - grant) : strlen(grant);
		size_t sub_len = sub_end ? (size_t)(sub_end - sub) : strlen(sub);

		if(grant_len == 1 && grant[0] == '#') return true;
		if(sub_len == 1 && sub[0] == '#') return false;
		if(!(grant_len == 1 && grant[0] == '+')){
			if(sub_len == 1 && sub[0] == '+') return false;
			if(grant_len != sub_len || strncmp(grant, sub, grant_len)) return false;
		}
		if(!grant_end && !sub_end) return true;
		if(!sub_end){
			/* `a/#` also matches `a` itself. */
			return grant_end && !strcmp(grant_end + 1, "#");
		}
		if(!grant_end) return false;
		grant = grant_end + 1;
		sub = sub_end + 1;
	}
}

static bool topic_matches(const char *filter, const char *topic)
{
	bool result = false;
	return mosquitto_topic_matches_sub(filter, topic, &result) == MOSQ_ERR_SUCCESS && result;
}

static bool granted(const struct grant *grants, size_t count, int access, const char *topic, bool subscribe)
{
	for(size_t i = 0; i < count; i++){
		if(!(grants[i].access & access)) continue;
		if(subscribe ? filter_covers(grants[i].filter, topic) : topic_matches(grants[i].filter, topic)) return true;
	}
	return false;
}

static bool allowed(const char *username, int access, const char *topic, bool subscribe)
{
	const struct user *user = find_user(&current, username);
	if(access == READ_ACCESS && granted(current.everyone, current.everyone_count, access, topic, subscribe)) return true;
	return user && granted(user->grants, user->grant_count, access, topic, subscribe);
}

static bool thing_name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == ':' || c == '_'
		|| c == '-';
}

/* May the client with this certificate subject use this client id? */
static bool client_id_allowed(const char *username, const char *client_id)
{
	const struct user *user = find_user(&current, username);
	size_t length = strlen(client_id);
	size_t thing_length = 0;
	char thing[MAX_CLIENT_ID + 1];

	if(!user || length == 0 || length > MAX_CLIENT_ID) return false;
	if(list_has(&current.reserved, client_id)) return list_has(&user->client_ids, client_id);
	while(thing_length < length && thing_name_char(client_id[thing_length])) thing_length++;
	if(thing_length == 0) return false;
	memcpy(thing, client_id, thing_length);
	thing[thing_length] = '\0';
	return list_has(&user->things, thing);
}

static char *certificate_subject(struct mosquitto *client)
{
	X509 *certificate = mosquitto_client_certificate(client);
	BIO *bio;
	char *data = NULL;
	char *subject = NULL;
	long length;

	if(!certificate) return NULL;
	bio = BIO_new(BIO_s_mem());
	if(bio){
		/* Exactly what Mosquitto's use_subject_as_username renders. */
		X509_NAME_print_ex(bio, X509_get_subject_name(certificate), 0, XN_FLAG_RFC2253);
		length = BIO_get_mem_data(bio, &data);
		if(length > 0 && (subject = malloc((size_t)length + 1))){
			memcpy(subject, data, (size_t)length);
			subject[length] = '\0';
		}
		BIO_free(bio);
	}
	X509_free(certificate);
	return subject;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *auth = event_data;
	const char *client_id = mosquitto_client_id(auth->client);
	const char *username;
	char *subject;
	(void)event;
	(void)userdata;

	subject = certificate_subject(auth->client);
	if(subject){
		if(mosquitto_set_username(auth->client, subject) != MOSQ_ERR_SUCCESS){
			free(subject);
			return MOSQ_ERR_AUTH;
		}
		free(subject);
	}
	/* Without a certificate this is a session kept for a device that is offline, checked
	 * again after a reload under the name it connected with: overair's broker has no
	 * listener that accepts a client without one (require_certificate). */
	username = mosquitto_client_username(auth->client);
	if(!username || !client_id) return MOSQ_ERR_AUTH;
	if(!client_id_allowed(username, client_id)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "overair access: client id %s is not one of %s's", client_id, username);
		return MOSQ_ERR_AUTH;
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *check = event_data;
	const char *username = mosquitto_client_username(check->client);
	(void)event;
	(void)userdata;

	switch(check->access){
		case MOSQ_ACL_SUBSCRIBE:
			return allowed(username, READ_ACCESS, check->topic, true) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_UNSUBSCRIBE:
			return MOSQ_ERR_SUCCESS;
		case MOSQ_ACL_READ:
			return allowed(username, READ_ACCESS, check->topic, false) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_WRITE:
			if(allowed(username, WRITE_ACCESS, check->topic, false)) return MOSQ_ERR_SUCCESS;
			if(mosquitto_client_protocol_version(check->client) == 5){
				return MOSQ_ERR_ACL_DENIED; /* PUBACK/PUBREC 0x87 */
			}
			/* MQTT 3.1.1 has no way to refuse a PUBLISH: AWS closes the connection. Any
			 * error other than ACL_DENIED makes Mosquitto do so. */
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "overair access: client %s may not publish to %s: disconnecting it",
					mosquitto_client_id(check->client), check->topic);
			return MOSQ_ERR_ADMINISTRATIVE_ACTION;
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

static int on_reload(int event, void *event_data, void *userdata)
{
	struct rules fresh;
	(void)event;
	(void)event_data;
	(void)userdata;

	rules_free(&current);
	if(rules_load(access_file, &fresh)){
		current = fresh;
	}else{
		mosquitto_log_printf(MOSQ_LOG_ERR, "overair access: the access file is not valid: granting nothing");
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options,
		int option_count)
{
	(void)userdata;
	plugin_id = identifier;
	for(int i = 0; i < option_count; i++){
		if(!strcmp(options[i].key, "access_file")) access_file = strdup(options[i].value);
	}
	if(!access_file){
		mosquitto_log_printf(MOSQ_LOG_ERR, "overair access: plugin_opt_access_file is not set");
		return MOSQ_ERR_INVAL;
	}
	if(!rules_load(access_file, &current)) return MOSQ_ERR_INVAL;
	if(mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL, NULL)){
		return MOSQ_ERR_INVAL;
	}
	mosquitto_log_printf(MOSQ_LOG_INFO, "overair access: %zu users from %s", current.user_count, access_file);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL);
	rules_free(&current);
	free(access_file);
	access_file = NULL;
	return MOSQ_ERR_SUCCESS;
}
