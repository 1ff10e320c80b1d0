/* Artifact groups through the C ABI: a producer (here, a pretend JIT) publishes the
 * files it built; a second handle finds them whole; a bad file name is refused.
 * Usage: groups BASE_DIR. Prints "ok" and exits 0 when every check holds. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "xcache.h"

#define CHECK(call)                                                            \
    do {                                                                       \
        xcache_status st_ = (call);                                            \
        if (st_ != XCACHE_OK) {                                                \
            fprintf(stderr, "%s: status %d: %s\n", #call, (int)st_,            \
                    xcache_last_error());                                      \
            return 1;                                                          \
        }                                                                      \
    } while (0)

static int read_file(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    return (int)n;
}

int main(int argc, char **argv) {
    if (argc != 2) return 64;
    xcache_cache *cache;
    CHECK(xcache_open(argv[1], &cache));

    xcache_group *g = NULL;
    CHECK(xcache_group_get(cache, "myjit", "kernel=saxpy;arch=x86-64-v3", &g));
    if (g != NULL) { fprintf(stderr, "a hit in an empty cache\n"); return 1; }

    const char *names[] = {"saxpy.o", "saxpy.json"};
    const char *object = "object code";
    const char *meta = "{\"entry\": \"saxpy\"}";
    const void *data[] = {object, meta};
    size_t sizes[] = {strlen(object), strlen(meta)};
    CHECK(xcache_group_put(cache, "myjit", "kernel=saxpy;arch=x86-64-v3", "saxpy", names,
                           data, sizes, 2, &g));
    bool hit = true;
    CHECK(xcache_group_hit(g, &hit));
    if (hit) { fprintf(stderr, "published, yet a hit\n"); return 1; }
    CHECK(xcache_group_release(g));

    CHECK(xcache_group_get(cache, "myjit", "kernel=saxpy;arch=x86-64-v3", &g));
    if (g == NULL) { fprintf(stderr, "not found after publishing\n"); return 1; }
    size_t n = 0;
    CHECK(xcache_group_file_count(g, &n));
    if (n != 2) { fprintf(stderr, "%zu files\n", n); return 1; }
    for (size_t i = 0; i < n; i++) {
        const char *name, *path;
        char buf[256];
        CHECK(xcache_group_file(g, i, &name, &path));
        const char *want = strcmp(name, "saxpy.o") == 0 ? object : meta;
        if (read_file(path, buf, sizeof buf) < 0 || strcmp(buf, want) != 0) {
            fprintf(stderr, "%s at %s holds \"%s\"\n", name, path, buf);
            return 1;
        }
    }
    CHECK(xcache_group_release(g));

    /* A file name that is not a plain name is refused, with the reason. */
    const char *bad[] = {"../escape"};
    xcache_status st = xcache_group_put(cache, "myjit", "other", NULL, bad, data, sizes, 1, &g);
    if (st != XCACHE_ERR_INVALID_REQUEST || strstr(xcache_last_error(), "plain file name") == NULL) {
        fprintf(stderr, "status %d: %s\n", (int)st, xcache_last_error());
        return 1;
    }
    CHECK(xcache_close(cache));
    printf("ok\n");
    return 0;
}
