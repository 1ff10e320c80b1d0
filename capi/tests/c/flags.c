/* Refused flags through the C ABI: each returns XCACHE_ERR_INVALID_REQUEST, the last
 * error names the flag, and nothing the flag would have run or written exists. A safe
 * flag still compiles. Prints "ok" and exits 0 on success. Arguments: the cache's base
 * dir, and a scratch directory holding an executable `as` that creates `ran`. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "xcache.h"

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    const char *scratch = argv[2];
    xcache_cache *cache = NULL;
    if (xcache_open(argv[1], &cache) != XCACHE_OK) {
        fprintf(stderr, "open: %s\n", xcache_last_error());
        return 1;
    }
    char prefix[1024], listing[1024], dumpdir[1024];
    snprintf(prefix, sizeof prefix, "--prefix=%s", scratch);
    snprintf(listing, sizeof listing, "-Wa,-a=%s/listing", scratch);
    snprintf(dumpdir, sizeof dumpdir, "%s/", scratch);
    const char *one[][2] = {
        {prefix, NULL},
        {listing, NULL},
        {"-fplugin=/nonexistent/plugin.so", NULL},
        {"-MMD", NULL},
        {"-dumpdir", dumpdir},
    };
    for (size_t i = 0; i < sizeof one / sizeof one[0]; i++) {
        size_t n = one[i][1] ? 2 : 1;
        xcache_library *lib = NULL;
        xcache_status st = xcache_compile(cache, "c", "int f(void) { return 1; }", one[i], n,
                                          NULL, 0, &lib);
        if (st != XCACHE_ERR_INVALID_REQUEST || lib != NULL) {
            fprintf(stderr, "%s: status %d\n", one[i][0], (int)st);
            return 1;
        }
        if (!strstr(xcache_last_error(), one[i][0])) {
            fprintf(stderr, "%s not named in: %s\n", one[i][0], xcache_last_error());
            return 1;
        }
    }
    char ran[1100], list[1100];
    snprintf(ran, sizeof ran, "%s/ran", scratch);
    snprintf(list, sizeof list, "%s/listing", scratch);
    if (access(ran, F_OK) == 0 || access(list, F_OK) == 0) {
        fprintf(stderr, "a refused flag ran or wrote something\n");
        return 1;
    }
    const char *safe[] = {"-O2", "-DN=3", "-ffast-math"};
    xcache_library *lib = NULL;
    if (xcache_compile(cache, "c", "int f(void) { return N; }", safe, 3, NULL, 0, &lib) !=
        XCACHE_OK) {
        fprintf(stderr, "safe flags: %s\n", xcache_last_error());
        return 1;
    }
    void *sym = NULL;
    if (xcache_library_symbol(lib, "f", &sym) != XCACHE_OK) return 1;
    int (*f)(void);
    *(void **)&f = sym;
    if (f() != 3) return 1;
    xcache_library_release(lib);
    xcache_close(cache);
    puts("ok");
    return 0;
}
