/* Compiling C at run time through xcache, from C.
 *
 * Build and run (from the repository root):
 *   cargo build --release -p xcache-capi
 *   cc -Iinclude examples/xcache_capi.c -Ltarget/release -lxcache \
 *      -Wl,-rpath,"$PWD/target/release" -o target/xcache_capi
 *   target/xcache_capi [BASE_DIR [INCLUDE_DIR]]   # the first run compiles; the next ones hit
 *
 * BASE_DIR: the cache (default: XCACHE_DIR, else ~/.cache/xcache). INCLUDE_DIR
 * (default: examples/include) holds the header the generated source includes: the
 * directory's path and the header's content are both part of the result's identity,
 * so editing the header makes the next run compile again. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xcache.h"

static const char *SOURCE =
    "#include \"xcache_example.h\"\n"
    "double axpy(double a, double x, double y) { return SCALE * a * x + y; }\n";

static int fail(const char *what, xcache_status st) {
    fprintf(stderr, "%s failed (status %d): %s\n", what, (int)st, xcache_last_error());
    return 1;
}

int main(int argc, char **argv) {
    /* Include dirs must be absolute: a relative one would be looked up in xcache's
     * build directory. */
    char incdir[PATH_MAX];
    if (!realpath(argc > 2 ? argv[2] : "examples/include", incdir)) {
        perror("the include dir (run from the repository root, or name it)");
        return 1;
    }

    /* NULL: the cache the environment names (XCACHE_DIR, else ~/.cache/xcache). */
    xcache_cache *cache = NULL;
    xcache_status st = xcache_open(argc > 1 && argv[1][0] ? argv[1] : NULL, &cache);
    if (st != XCACHE_OK) return fail("xcache_open", st);

    const char *flags[] = {"-O2"};
    const char *include_dirs[] = {incdir};
    xcache_library *lib = NULL;
    st = xcache_compile(cache, "c", SOURCE, flags, 1, include_dirs, 1, &lib);
    if (st != XCACHE_OK) return fail("xcache_compile", st);

    const char *path = NULL, *key = NULL;
    bool hit = false;
    void *sym = NULL;
    if ((st = xcache_library_path(lib, &path)) != XCACHE_OK) return fail("xcache_library_path", st);
    if ((st = xcache_library_key(lib, &key)) != XCACHE_OK) return fail("xcache_library_key", st);
    if ((st = xcache_library_hit(lib, &hit)) != XCACHE_OK) return fail("xcache_library_hit", st);
    if ((st = xcache_library_symbol(lib, "axpy", &sym)) != XCACHE_OK) return fail("xcache_library_symbol", st);

    double (*axpy)(double, double, double);
    *(void **)&axpy = sym; /* POSIX's way to turn an object pointer into a function pointer */
    printf("key %.12s  %s\n", key, hit ? "hit: no compiler ran" : "miss: compiled");
    printf("library %s\n", path);
    double r = axpy(3.0, 4.0, 1.0);
    printf("axpy(3, 4, 1) = %g\n", r);

    /* A failure: a status, and a message to read. */
    xcache_library *bad = NULL;
    st = xcache_compile(cache, "c", "int broken( {", NULL, 0, NULL, 0, &bad);
    const char *msg = xcache_last_error();
    printf("a broken source: status %d (XCACHE_ERR_COMPILE is %d), message starts \"%.40s\"\n",
           (int)st, (int)XCACHE_ERR_COMPILE, msg);

    /* Released: the file may now be collected, and `axpy` must not be called again. */
    xcache_library_release(lib);
    xcache_close(cache);
    return st == XCACHE_ERR_COMPILE ? 0 : 1;
}
