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
 *     topic noread <filter>                never delivered to the user, whatever it may read
 *     thing <thing name>                   the user may use this thing's client ids
 *     clientid <client id>                 an id reserved for this user alone
 *
 * After a reload Mosquitto re-authenticates every session (mosquitto_security_apply), so
 * a certificate that lost its last thing, or that left the file (revoked, inactive), is
 * disconnected there and then.
 *
 * Access changes of single devices do not rewrite the file: overair sends them on the
 * broker's control topic $CONTROL/overair-access/v1 (Mosquitto hands such messages to
 * this plugin after the ACL check, so only a client granted `write` to that topic, the
 * server's witness identity, can send one). A change is lines of the file's format:
 *
 *     seq <n>                              first line: answered with that number
 *     user <certificate subject>           replaces that user's rules as a whole
 *     topic ... / thing ...                (as in the file)
 *     drop <certificate subject>           the user loses all access
 *
 * It is applied in constant time (users are kept in a hash table), clients of a user that
 * was dropped or lost a thing are disconnected at once, and the plugin answers
 * `applied <n>` (or `refused <n>: <why>`, changing nothing) on
 * $CONTROL/overair-access/v1/response. The file is rewritten whole only when the broker
 * (re)starts, so it and the changes since describe the same rules.
 *
 * Fleet provisioning by claim (server/provisioning/, docs/compatibility.md). A user with
 * the line `claim` holds a claim certificate, which many devices share. AWS answers the
 * provisioning MQTT API "through the same MQTT connection used to publish the API
 * request" (developer guide, "Device provisioning MQTT API"); on a plain broker every
 * subscriber of $aws/certificates/create/json/accepted would get every device's private
 * key. So:
 *
 *  - a claim user's grants are `write` for its request topics and `subscribe` (granted
 *    to SUBSCRIBE, never to delivery) for their answers: no message published on a
 *    topic ever reaches it by routing;
 *  - every message a claim client publishes is moved (MOSQ_EVT_MESSAGE) to
 *    $overair/claim/v1/<connection>/<client id>/<its topic>, which only the service may
 *    read; <connection> is a number given to each connection at its login;
 *  - the service answers on the control topic $CONTROL/overair-claim/v1 with
 *    `<connection> <client id> <answer topic>\n<payload>`, and the plugin hands the
 *    payload to that client id alone (mosquitto_broker_publish with a client id: no
 *    subscription and no ACL is consulted), only while the same connection holds that id,
 *    so a later connection that took the id over gets nothing meant for the earlier one;
 *  - a claim client may use any client id of thing-name characters (at most 128) that no
 *    live connection of another certificate holds and that names no thing a certificate
 *    is attached to, so a claim certificate can neither take a device's session over nor
 *    inherit its persistent session.
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
#define CONTROL_TOPIC "$CONTROL/overair-access/v1"
#define RESPONSE_TOPIC "$CONTROL/overair-access/v1/response"
#define MAX_CHANGE_BYTES (1024 * 1024)
#define SUBSCRIBE_ACCESS 4 /* SUBSCRIBE granted, delivery never (a claim user's answers) */
/* Topics a user's read grants cover but that are not delivered to it. The service reads
 * every topic under a thing's jobs/ (so it can answer InvalidTopic, as AWS does), and
 * MQTT 3.1.1 has no "no local" option: each of its own replies and notifications came
 * back to it, as many messages as the devices' requests (bench/fleet.py). */
#define NOREAD_ACCESS 8
#define CLAIM_ANSWER_TOPIC "$CONTROL/overair-claim/v1"
#define CLAIM_REQUEST_PREFIX "$overair/claim/v1/"

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
	bool claim; /* holds a claim certificate (fleet provisioning) */
	/* In the `live` table: the connection holding this client id. */
	const void *client;
	unsigned long connection;
};

/* Users by name: open addressing with linear probing (at most half full), so a lookup,
 * an insertion and a removal cost the same with 100 and with 100,000 devices. */
struct rules {
	struct user **slots;
	size_t slot_count, user_count;
	struct user *last; /* the user the following lines of a file or change belong to */
	struct grant *everyone;
	size_t everyone_count, everyone_capacity;
	struct list reserved; /* every `clientid` of every user */
	struct list dropped; /* in a change: the users it drops */
	long seq; /* in a change: its number */
};

static mosquitto_plugin_id_t *plugin_id;
static char *access_file;
static struct rules current;
/* Who is connected: per certificate subject, the client ids of its live connections (an
 * id appears once per connection, so a takeover's old connection leaving does not forget
 * the new one). A change that takes a thing from a user closes exactly the connections
 * whose client id belongs to it; the others stay, as after a reload. */
static struct rules connected;
/* Every live connection by client id (entry name): its username (things.items[0]), its
 * number and its context. */
static struct rules live;
static unsigned long connections_made;
/* Every thing some user may use, with how many users may (grant_count). */
static struct rules thing_index;

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

static void list_remove_one(struct list *list, const char *text)
{
	for(size_t i = 0; i < list->count; i++){
		if(!strcmp(list->items[i], text)){
			free(list->items[i]);
			list->items[i] = list->items[--list->count];
			return;
		}
	}
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

static void user_free(struct user *user)
{
	if(!user) return;
	free(user->name);
	for(size_t j = 0; j < user->grant_count; j++) free(user->grants[j].filter);
	free(user->grants);
	list_free(&user->things);
	list_free(&user->client_ids);
	free(user);
}

static void rules_free(struct rules *rules)
{
	for(size_t i = 0; i < rules->slot_count; i++) user_free(rules->slots[i]);
	free(rules->slots);
	for(size_t i = 0; i < rules->everyone_count; i++) free(rules->everyone[i].filter);
	free(rules->everyone);
	list_free(&rules->reserved);
	list_free(&rules->dropped);
	memset(rules, 0, sizeof(*rules));
}

static size_t name_hash(const char *name)
{
	size_t hash = 1469598103934665603ULL; /* FNV-1a */
	for(const unsigned char *c = (const unsigned char *)name; *c; c++){
		hash ^= *c;
		hash *= 1099511628211ULL;
	}
	return hash;
}

/* The slot holding `name`, or the empty slot where it would go. */
static size_t slot_of(const struct rules *rules, const char *name)
{
	size_t mask = rules->slot_count - 1;
	size_t i = name_hash(name) & mask;
	while(rules->slots[i] && strcmp(rules->slots[i]->name, name)) i = (i + 1) & mask;
	return i;
}

static const struct user *find_user(const struct rules *rules, const char *name)
{
	if(!name || !rules->slot_count) return NULL;
	return rules->slots[slot_of(rules, name)];
}

static bool table_grow(struct rules *rules)
{
	size_t count = rules->slot_count ? rules->slot_count * 2 : 64;
	struct user **slots = calloc(count, sizeof(struct user *));
	struct rules bigger = *rules;
	if(!slots) return false;
	bigger.slots = slots;
	bigger.slot_count = count;
	for(size_t i = 0; i < rules->slot_count; i++){
		if(rules->slots[i]) slots[slot_of(&bigger, rules->slots[i]->name)] = rules->slots[i];
	}
	free(rules->slots);
	rules->slots = slots;
	rules->slot_count = count;
	return true;
}

/* Put `user` in the table; false if its name is there already (or out of memory). */
static bool user_insert(struct rules *rules, struct user *user)
{
	size_t i;
	if((rules->user_count + 1) * 2 > rules->slot_count && !table_grow(rules)) return false;
	i = slot_of(rules, user->name);
	if(rules->slots[i]) return false;
	rules->slots[i] = user;
	rules->user_count++;
	return true;
}

/* Take `name` out of the table and return it (NULL if absent); the entries after it in
 * its probe run move back, so no lookup ever stops at the hole. */
static struct user *user_remove(struct rules *rules, const char *name)
{
	size_t mask, i, j;
	struct user *removed;
	if(!rules->slot_count) return NULL;
	mask = rules->slot_count - 1;
	i = slot_of(rules, name);
	removed = rules->slots[i];
	if(!removed) return NULL;
	rules->slots[i] = NULL;
	rules->user_count--;
	for(j = (i + 1) & mask; rules->slots[j]; j = (j + 1) & mask){
		size_t home = name_hash(rules->slots[j]->name) & mask;
		/* Move it into the hole unless its home lies cyclically in (i, j]. */
		if((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))){
			rules->slots[i] = rules->slots[j];
			rules->slots[j] = NULL;
			i = j;
		}
	}
	return removed;
}

static int parse_access(const char *word)
{
	if(!strcmp(word, "subscribe")) return SUBSCRIBE_ACCESS;
	if(!strcmp(word, "read")) return READ_ACCESS;
	if(!strcmp(word, "write")) return WRITE_ACCESS;
	if(!strcmp(word, "readwrite")) return READ_ACCESS | WRITE_ACCESS;
	if(!strcmp(word, "noread")) return NOREAD_ACCESS;
	return 0;
}

/* One line: words separated by single spaces, as many as its kind takes; false if it is
 * not a line of the access file (so a stray space or newline can never change a rule).
 * Lines after `user` belong to that user, the last one added. */
static bool parse_line(struct rules *rules, char *line, bool change)
{
	char *words[4];
	size_t count = 0;
	char *cursor = line;
	struct user *user = rules->last;

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
		user = calloc(1, sizeof(*user));
		if(!user) return false;
		user->name = strdup(words[1]);
		if(!user->name || list_has(&rules->dropped, words[1]) || !user_insert(rules, user)){
			user_free(user); /* a name given twice (or both set and dropped) */
			return false;
		}
		rules->last = user;
		return true;
	}
	if(change && count == 2 && !strcmp(words[0], "drop")){
		if(find_user(rules, words[1]) || list_has(&rules->dropped, words[1])) return false;
		rules->last = NULL;
		return list_add(&rules->dropped, words[1]);
	}
	if(change && count == 2 && !strcmp(words[0], "seq")) return false; /* only as the first line */
	if(change && (!strcmp(words[0], "pattern") || !strcmp(words[0], "clientid"))){
		return false; /* the server's own identities change only with the whole file */
	}
	if(count == 3 && !strcmp(words[0], "pattern")){
		return !strcmp(words[1], "read")
			&& grant_add(&rules->everyone, &rules->everyone_count, &rules->everyone_capacity, READ_ACCESS, words[2]);
	}
	if(!user) return false;
	if(count == 1 && !strcmp(words[0], "claim")){
		/* A claim user changes only with the whole file. */
		if(change || user->claim) return false;
		user->claim = true;
		return true;
	}
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
		if(!parse_line(rules, line, false)){
			mosquitto_log_printf(MOSQ_LOG_ERR, "overair access: %s line %ld is not valid", path, number);
			ok = false;
		}
	}
	free(line);
	fclose(file);
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
	if(access == READ_ACCESS && !subscribe && user
			&& granted(user->grants, user->grant_count, NOREAD_ACCESS, topic, false)) return false;
	if((access & READ_ACCESS) && granted(current.everyone, current.everyone_count, access, topic, subscribe)) return true;
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

/* Count `user`'s things in (delta 1) or out of (delta -1) the thing index; an entry's
 * `connection` field is its count. */
static void index_things(const struct user *user, int delta)
{
	for(size_t i = 0; user && i < user->things.count; i++){
		const char *thing = user->things.items[i];
		struct user *entry = thing_index.slot_count ? thing_index.slots[slot_of(&thing_index, thing)] : NULL;
		if(delta > 0){
			if(!entry){
				entry = calloc(1, sizeof(*entry));
				if(!entry) continue;
				entry->name = strdup(thing);
				if(!entry->name || !user_insert(&thing_index, entry)){
					user_free(entry);
					continue;
				}
			}
			entry->connection++;
		}else if(entry && --entry->connection == 0){
			user_free(user_remove(&thing_index, thing));
		}
	}
}

static void index_rebuild(void)
{
	rules_free(&thing_index);
	for(size_t i = 0; i < current.slot_count; i++) index_things(current.slots[i], 1);
}

static struct user *live_find(const char *client_id)
{
	return client_id && live.slot_count ? live.slots[slot_of(&live, client_id)] : NULL;
}

/* `client` now holds `client_id` (a takeover replaces the earlier holder). */
static void live_set(struct mosquitto *client, const char *client_id, const char *username)
{
	struct user *entry = NULL;
	user_free(user_remove(&live, client_id));
	entry = calloc(1, sizeof(*entry));
	if(!entry) return;
	entry->name = strdup(client_id);
	if(!entry->name || !list_add(&entry->things, username) || !user_insert(&live, entry)){
		user_free(entry);
		return;
	}
	entry->client = client;
	entry->connection = ++connections_made;
}

static void live_drop(struct mosquitto *client, const char *client_id)
{
	struct user *entry = live_find(client_id);
	/* After a takeover the id belongs to the new connection: keep it. */
	if(entry && entry->client == client) user_free(user_remove(&live, client_id));
}

/* May a client with a claim certificate use this client id? Thing-name characters only,
 * not a thing any certificate is attached to (its session, live or persistent, is that
 * device's), not reserved, and not held by a live connection of another certificate. */
static bool claim_client_id_allowed(const char *username, const char *client_id)
{
	size_t length = strlen(client_id);
	const struct user *holder = live_find(client_id);
	if(length == 0 || length > MAX_CLIENT_ID) return false;
	for(size_t i = 0; i < length; i++){
		if(!thing_name_char(client_id[i])) return false;
	}
	if(list_has(&current.reserved, client_id)) return false;
	if(thing_index.slot_count && thing_index.slots[slot_of(&thing_index, client_id)]) return false;
	return !holder || (holder->things.count == 1 && !strcmp(holder->things.items[0], username));
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

static void session_add(const char *username, const char *client_id)
{
	struct user *entry = connected.slot_count ? connected.slots[slot_of(&connected, username)] : NULL;
	if(!entry){
		entry = calloc(1, sizeof(*entry));
		if(!entry) return;
		entry->name = strdup(username);
		if(!entry->name || !user_insert(&connected, entry)){
			user_free(entry);
			return;
		}
	}
	list_add(&entry->client_ids, client_id);
}

/* Close the connections of `name` whose client id its (new) rules no longer allow. */
static void kick_disallowed(const char *name)
{
	const struct user *entry = connected.slot_count ? connected.slots[slot_of(&connected, name)] : NULL;
	struct list doomed;
	if(!entry) return;
	memset(&doomed, 0, sizeof(doomed));
	for(size_t i = 0; i < entry->client_ids.count; i++){
		if(!client_id_allowed(name, entry->client_ids.items[i])) list_add(&doomed, entry->client_ids.items[i]);
	}
	/* Kicking changes `connected` (the disconnect event): kick from a copy. */
	for(size_t i = 0; i < doomed.count; i++) mosquitto_kick_client_by_clientid(doomed.items[i], false);
	list_free(&doomed);
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *auth = event_data;
	const char *client_id = mosquitto_client_id(auth->client);
	const char *username;
	const struct user *user;
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
	user = find_user(&current, username);
	if(user && user->claim ? !claim_client_id_allowed(username, client_id) : !client_id_allowed(username, client_id)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "overair access: client id %s is not one of %s's", client_id, username);
		return MOSQ_ERR_AUTH;
	}
	session_add(username, client_id);
	live_set(auth->client, client_id, username);
	return MOSQ_ERR_SUCCESS;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *gone = event_data;
	const char *username = mosquitto_client_username(gone->client);
	const char *client_id = mosquitto_client_id(gone->client);
	struct user *entry;
	(void)event;
	(void)userdata;

	if(client_id) live_drop(gone->client, client_id);
	if(!username || !client_id || !connected.slot_count) return MOSQ_ERR_SUCCESS;
	entry = connected.slots[slot_of(&connected, username)];
	if(entry){
		list_remove_one(&entry->client_ids, client_id);
		if(entry->client_ids.count == 0) user_free(user_remove(&connected, username));
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
			return allowed(username, READ_ACCESS | SUBSCRIBE_ACCESS, check->topic, true)
				? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
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
	/* Mosquitto re-authenticates every connection after this (security apply), which
	 * records each live one again. */
	rules_free(&connected);
	if(rules_load(access_file, &fresh)){
		current = fresh;
	}else{
		mosquitto_log_printf(MOSQ_LOG_ERR, "overair access: the access file is not valid: granting nothing");
	}
	index_rebuild();
	return MOSQ_ERR_SUCCESS;
}

static void respond(const char *text)
{
	size_t length = strlen(text);
	void *payload = mosquitto_calloc(1, length + 1);
	if(!payload) return;
	memcpy(payload, text, length);
	/* Ownership of payload passes to the broker. */
	mosquitto_broker_publish(NULL, RESPONSE_TOPIC, (int)length, payload, 1, false, NULL);
}

static bool same_things(const struct user *before, const struct user *after)
{
	if(!after) return false;
	for(size_t i = 0; i < before->things.count; i++){
		if(!list_has(&after->things, before->things.items[i])) return false;
	}
	return true;
}

/* Parse a change: `seq <n>` first, then lines of the file's format plus `drop`. */
static bool change_parse(char *text, struct rules *change, const char **why)
{
	char *line = text, *next;
	bool first = true;
	memset(change, 0, sizeof(*change));
	change->seq = -1;
	for(; line && *line; line = next){
		next = strchr(line, '\n');
		if(next) *next++ = '\0';
		if(line[0] == '\0') continue;
		if(first){
			char *end;
			first = false;
			if(strncmp(line, "seq ", 4)){ *why = "the first line is not seq"; return false; }
			change->seq = strtol(line + 4, &end, 10);
			if(*end || change->seq < 0){ *why = "bad seq"; return false; }
			continue;
		}
		if(!parse_line(change, line, true)){ *why = "a line is not valid"; return false; }
	}
	if(first){ *why = "empty"; return false; }
	return true;
}

static int on_control(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *control = event_data;
	struct rules change;
	char answer[128];
	char *text;
	const char *why = NULL;
	(void)event;
	(void)userdata;

	/* Defence in depth: Mosquitto checked the ACL before calling us; check it again. */
	if(!allowed(mosquitto_client_username(control->client), WRITE_ACCESS, CONTROL_TOPIC, false)){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "overair access: client %s may not change access",
				mosquitto_client_id(control->client));
		return MOSQ_ERR_ACL_DENIED;
	}
	if(control->payloadlen == 0 || control->payloadlen > MAX_CHANGE_BYTES) return MOSQ_ERR_INVAL;
	text = malloc(control->payloadlen + 1);
	if(!text) return MOSQ_ERR_NOMEM;
	memcpy(text, control->payload, control->payloadlen);
	text[control->payloadlen] = '\0';
	if(strlen(text) != control->payloadlen){
		why = "NUL in the change";
		memset(&change, 0, sizeof(change));
		change.seq = -1;
	}else if(!change_parse(text, &change, &why)){
		/* nothing applied */
	}else{
		/* Apply: every user named is replaced, every dropped one removed; clients of a
		 * user that lost any thing (or everything) are disconnected now, as the
		 * re-authentication after a reload would. */
		for(size_t i = 0; i < change.slot_count; i++){
			struct user *user = change.slots[i];
			struct user *before;
			if(!user) continue;
			change.slots[i] = NULL;
			before = user_remove(&current, user->name);
			index_things(before, -1);
			if(!user_insert(&current, user)){
				user_free(user);
				user = NULL;
				why = "out of memory";
			}
			index_things(user, 1);
			if(before && !same_things(before, user)) kick_disallowed(before->name);
			user_free(before);
		}
		for(size_t i = 0; i < change.dropped.count; i++){
			struct user *before = user_remove(&current, change.dropped.items[i]);
			index_things(before, -1);
			if(before){
				mosquitto_kick_client_by_username(before->name, false);
				user_free(before);
			}
		}
	}
	if(why){
		mosquitto_log_printf(MOSQ_LOG_ERR, "overair access: change %ld refused: %s", change.seq, why);
		snprintf(answer, sizeof(answer), "refused %ld: %s", change.seq, why);
	}else{
		snprintf(answer, sizeof(answer), "applied %ld", change.seq);
	}
	respond(answer);
	rules_free(&change);
	free(text);
	return MOSQ_ERR_SUCCESS;
}

/* Everything a claim client publishes goes to the service alone, under a topic naming
 * its connection and client id (the comment at the top). */
static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *message = event_data;
	const char *client_id = mosquitto_client_id(message->client);
	const struct user *user = find_user(&current, mosquitto_client_username(message->client));
	const struct user *entry;
	size_t length;
	char *topic;
	(void)event;
	(void)userdata;

	if(!user || !user->claim) return MOSQ_ERR_SUCCESS;
	entry = live_find(client_id);
	if(!entry || entry->client != message->client) return MOSQ_ERR_ACL_DENIED;
	length = strlen(CLAIM_REQUEST_PREFIX) + 24 + strlen(client_id) + strlen(message->topic);
	topic = mosquitto_malloc(length);
	if(!topic) return MOSQ_ERR_NOMEM;
	snprintf(topic, length, CLAIM_REQUEST_PREFIX "%lu/%s/%s", entry->connection, client_id, message->topic);
	/* The broker takes the new topic and does not free the old one. */
	mosquitto_free(message->topic);
	message->topic = topic;
	message->retain = false;
	return MOSQ_ERR_SUCCESS;
}

/* The service's answer to one claim request: `<connection> <client id> <topic>\n<body>`,
 * handed to that connection alone, on one of its answer topics. */
static int on_claim_answer(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *control = event_data;
	const char *payload = control->payload;
	const char *newline;
	char header[512], check[512], client_id[MAX_CLIENT_ID + 1], topic[256];
	unsigned long connection;
	const struct user *entry, *holder;
	size_t header_length;
	(void)event;
	(void)userdata;

	if(!allowed(mosquitto_client_username(control->client), WRITE_ACCESS, CLAIM_ANSWER_TOPIC, false)){
		return MOSQ_ERR_ACL_DENIED;
	}
	if(!payload || control->payloadlen == 0 || control->payloadlen > MAX_CHANGE_BYTES) return MOSQ_ERR_INVAL;
	newline = memchr(payload, '\n', control->payloadlen);
	if(!newline) return MOSQ_ERR_INVAL;
	header_length = (size_t)(newline - payload);
	if(header_length >= sizeof(header)) return MOSQ_ERR_INVAL;
	memcpy(header, payload, header_length);
	header[header_length] = '\0';
	if(sscanf(header, "%lu %128s %255s", &connection, client_id, topic) != 3) return MOSQ_ERR_INVAL;
	snprintf(check, sizeof(check), "%lu %s %s", connection, client_id, topic);
	if(strcmp(check, header)) return MOSQ_ERR_INVAL; /* exactly that form, nothing more */
	entry = live_find(client_id);
	holder = entry && entry->things.count == 1 ? find_user(&current, entry->things.items[0]) : NULL;
	if(!entry || entry->connection != connection || !holder || !holder->claim
			|| !granted(holder->grants, holder->grant_count, SUBSCRIBE_ACCESS, topic, false)){
		/* That connection is gone (or lost its claim): the answer is nobody else's. */
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "overair access: claim answer for %s dropped: its connection is gone",
				client_id);
		return MOSQ_ERR_SUCCESS;
	}
	return mosquitto_broker_publish_copy(client_id, topic, (int)(control->payloadlen - header_length - 1),
			newline + 1, 1, false, NULL);
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
	index_rebuild();
	if(mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL)){
		return MOSQ_ERR_INVAL;
	}
	if(mosquitto_callback_register(plugin_id, MOSQ_EVT_CONTROL, on_claim_answer, CLAIM_ANSWER_TOPIC, NULL)){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "overair access: no control topics: fleet provisioning by claim is off");
	}
	if(mosquitto_callback_register(plugin_id, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC, NULL)){
		/* Changes then go by rewriting the file and reloading, as for an external broker. */
		mosquitto_log_printf(MOSQ_LOG_WARNING, "overair access: this Mosquitto has no control topics");
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
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_CONTROL, on_claim_answer, CLAIM_ANSWER_TOPIC);
	rules_free(&current);
	rules_free(&connected);
	rules_free(&live);
	rules_free(&thing_index);
	free(access_file);
	access_file = NULL;
	return MOSQ_ERR_SUCCESS;
}
