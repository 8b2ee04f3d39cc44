"""The `@tflm` external repository: TensorFlow Lite Micro, prebuilt by TFLM's own Makefile.

Declared once in WORKSPACE:

    load("//tools/bazel:tflm.bzl", "tflm_repository")
    tflm_repository(name = "tflm", commit = "...", sha256 = "...")

Three modes, chosen from the client environment when Bazel fetches the repository
(it is fetched again whenever one of TFLM_DIR / TFLM_LIB / TFLM_FETCH / TFLM_SHA256
changes):

1. `TFLM_DIR=/path/to/tflite-micro` (an absolute path, or one relative to this
   workspace): a local checkout in which TFLM's own
   `make -f tensorflow/lite/micro/tools/make/Makefile microlite` has been run.
   Its headers are symlinked into the repository and `@tflm//:tflm` is a
   cc_library linking the prebuilt `gen/<target>/lib/libtensorflow-microlite.a`.
   If several gen/ directories hold the library, `TFLM_LIB=<path to the .a>`
   picks one (otherwise a `*_default_*` build is preferred).

2. `TFLM_FETCH=1` (needs network): downloads the pinned upstream commit
   (`commit` / `sha256` attributes below, overridable with TFLM_SHA256), runs
   TFLM's Makefile `microlite` target inside the repository (TFLM's Makefile
   downloads its own third-party deps: flatbuffers, gemmlowp, ruy, kissfft) and
   then proceeds as in mode 1. Takes several minutes once; cached afterwards.

3. Neither: a stub repository. `@tflm//:tflm` still exists but is incompatible
   with every platform (`target_compatible_with` an unset constraint), so every
   target depending on it (directly or not) is SKIPPED by `bazel test //...`
   instead of failing. `@tflm//:defs.bzl` exports `TFLM_AVAILABLE` and
   `TFLM_SKIP_MESSAGE` for BUILD files that want to know.
"""

_ENV_DIR = "TFLM_DIR"
_ENV_LIB = "TFLM_LIB"
_ENV_FETCH = "TFLM_FETCH"
_ENV_SHA = "TFLM_SHA256"

# Include directories TFLM's Makefile passes (relative to the checkout root).
_DOWNLOADS = "tensorflow/lite/micro/tools/make/downloads"
_INCLUDE_DIRS = [
    ".",
    _DOWNLOADS,
    _DOWNLOADS + "/flatbuffers/include",
    _DOWNLOADS + "/gemmlowp",
    _DOWNLOADS + "/ruy",
    _DOWNLOADS + "/kissfft",
]

# The defines TFLM's Makefile compiles the library with that change what a user
# of its headers sees (TF_LITE_STATIC_MEMORY changes TfLiteTensor's layout).
_DEFINES = [
    "TF_LITE_STATIC_MEMORY",
    "TF_LITE_DISABLE_X86_NEON",
]

SKIP_MESSAGE = ("TFLM tests are SKIPPED (no TFLite Micro): to enable them, build TFLM " +
                "(make -f tensorflow/lite/micro/tools/make/Makefile microlite) and run " +
                "`TFLM_DIR=/path/to/tflite-micro bazel test //...` " +
                "(or `TFLM_FETCH=1 bazel test //...` with network access)")

_HEADER_EXTS = [".h", ".hpp", ".inc", ".hh"]

def _fail(msg):
    fail("\n@tflm: " + msg + "\n")

def _resolve_dir(ctx, value):
    if value.startswith("/"):
        return ctx.path(value)
    ws = ctx.path(Label("//:WORKSPACE")).dirname
    return ctx.path(str(ws) + "/" + value)

def _find_library(ctx, root):
    """Returns the path (relative to root) of the prebuilt libtensorflow-microlite.a."""
    want = ctx.os.environ.get(_ENV_LIB, "").strip()
    if want:
        p = ctx.path(want if want.startswith("/") else str(root) + "/" + want)
        if not p.exists:
            _fail("%s=%s does not exist" % (_ENV_LIB, want))
        rel = str(p)
        if not rel.startswith(str(root) + "/"):
            _fail("%s=%s must lie inside %s" % (_ENV_LIB, want, root))
        return rel[len(str(root)) + 1:]
    res = ctx.execute(["find", "-L", "gen", "tensorflow/lite/micro/tools/make/gen",
                       "-maxdepth", "3", "-path", "*/lib/libtensorflow-microlite.a"],
                      working_directory = str(root), quiet = True)
    found = sorted([l for l in res.stdout.splitlines() if l.strip()])
    if not found:
        _fail(("no gen/*/lib/libtensorflow-microlite.a under %s: build it first with\n" +
               "  make -C %s -f tensorflow/lite/micro/tools/make/Makefile microlite") % (root, root))
    # Prefer a build for this host (gen/linux_x86_64_default_gcc/...) over cross builds.
    arch = ctx.execute(["uname", "-m"], quiet = True).stdout.strip()
    host = [f for f in found if ("/%s_%s_" % (ctx.os.name.split(" ")[0].lower(), arch)) in f]
    preferred = [f for f in host if "_default_" in f] or host or found
    if len(found) > 1:
        print("@tflm: several TFLM builds found %s; using %s (set %s to choose)" %
              (found, preferred[0], _ENV_LIB))
    return preferred[0]

def _list_headers(ctx, root):
    """Headers of the checkout (and of its downloads/), relative to root."""
    cmd = ["find", ".", "-name", ".git", "-prune", "-o", "-name", "gen", "-prune", "-o",
           "-type", "f", "("]
    for i, ext in enumerate(_HEADER_EXTS):
        if i:
            cmd.append("-o")
        cmd += ["-name", "*" + ext]
    cmd += [")", "-print"]
    res = ctx.execute(cmd, working_directory = str(root), quiet = True)
    if res.return_code:
        _fail("listing headers of %s failed: %s" % (root, res.stderr))
    return sorted([l[2:] for l in res.stdout.splitlines() if l.startswith("./")])

def _write_real_repo(ctx, root, origin):
    lib = _find_library(ctx, root)
    gen_dir = lib.rsplit("/lib/", 1)[0]
    headers = _list_headers(ctx, root)

    # Symlink file by file: TFLM's tree has BUILD files of its own, which would cut
    # it into packages that a glob in our BUILD cannot see into.
    for h in headers:
        ctx.symlink(str(root) + "/" + h, "src/" + h)
    ctx.symlink(str(root) + "/" + lib, "lib/libtensorflow-microlite.a")

    includes = ["src" if d == "." else "src/" + d for d in _INCLUDE_DIRS]
    defines = list(_DEFINES)
    if gen_dir.endswith("_compression") or "_compression_" in gen_dir:
        defines.append("USE_TFLM_COMPRESSION")

    commit = ""
    res = ctx.execute(["git", "-C", str(root), "rev-parse", "HEAD"], quiet = True)
    if res.return_code == 0:
        commit = res.stdout.strip()

    ctx.file("BUILD.bazel", """\
# Generated by //tools/bazel:tflm.bzl from {origin}
# library: {lib}
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "tflm",
    srcs = ["lib/libtensorflow-microlite.a"],
    hdrs = glob(["src/**"]),
    includes = {includes},
    defines = {defines},
    linkstatic = True,
    linkopts = ["-lm"],
)

exports_files(["defs.bzl"])
""".format(origin = origin, lib = lib, includes = repr(includes), defines = repr(defines)))
    ctx.file("defs.bzl", """\
TFLM_AVAILABLE = True
TFLM_ORIGIN = {origin}
TFLM_COMMIT = {commit}
TFLM_SKIP_MESSAGE = ""
""".format(origin = repr(origin), commit = repr(commit)))

def _write_stub_repo(ctx):
    ctx.file("BUILD.bazel", """\
# Generated by //tools/bazel:tflm.bzl: TFLM_DIR is not set, so this is a stub.
# Anything depending on :tflm is incompatible with every platform and is
# skipped by `bazel test //...` / `bazel build //...`.
package(default_visibility = ["//visibility:public"])

load(":defs.bzl", "TFLM_SKIP_MESSAGE")

# Shown (once) by every bazel command that loads a target depending on @tflm.
print(TFLM_SKIP_MESSAGE)

constraint_setting(name = "tflm_presence")

# No platform declares this value, so targets requiring it are incompatible.
constraint_value(
    name = "tflm_available",
    constraint_setting = ":tflm_presence",
)

cc_library(
    name = "tflm",
    target_compatible_with = [":tflm_available"],
)

exports_files(["defs.bzl"])
""")
    ctx.file("defs.bzl", """\
TFLM_AVAILABLE = False
TFLM_ORIGIN = ""
TFLM_COMMIT = ""
TFLM_SKIP_MESSAGE = {msg}
""".format(msg = repr(SKIP_MESSAGE)))

def _fetch_and_build(ctx):
    sha = ctx.os.environ.get(_ENV_SHA, "").strip() or ctx.attr.sha256
    urls = [u.format(commit = ctx.attr.commit) for u in ctx.attr.urls]
    ctx.report_progress("downloading TFLM " + ctx.attr.commit)
    ctx.download_and_extract(
        url = urls,
        sha256 = sha,
        stripPrefix = ctx.attr.strip_prefix.format(commit = ctx.attr.commit),
        output = "upstream",
    )
    root = ctx.path("upstream")
    ctx.report_progress("building TFLM microlite (several minutes)")
    res = ctx.execute(
        ["make", "-f", "tensorflow/lite/micro/tools/make/Makefile", "-j2", "microlite"],
        working_directory = str(root),
        timeout = 3600,
        quiet = False,
    )
    if res.return_code:
        _fail("building TFLM in %s failed:\n%s" % (root, res.stderr[-4000:]))
    return root

def _tflm_repository_impl(ctx):
    tflm_dir = ctx.os.environ.get(_ENV_DIR, "").strip()
    fetch = ctx.os.environ.get(_ENV_FETCH, "").strip() not in ("", "0", "false", "no")
    if tflm_dir:
        root = _resolve_dir(ctx, tflm_dir)
        if not ctx.path(str(root) + "/tensorflow/lite/micro/micro_interpreter.h").exists:
            _fail("%s=%s is not a tflite-micro checkout (no tensorflow/lite/micro/micro_interpreter.h)" %
                  (_ENV_DIR, tflm_dir))
        _write_real_repo(ctx, root, "TFLM_DIR=" + str(root))
    elif fetch:
        root = _fetch_and_build(ctx)
        _write_real_repo(ctx, root, "TFLM_FETCH of commit " + ctx.attr.commit)
    else:
        _write_stub_repo(ctx)

tflm_repository = repository_rule(
    implementation = _tflm_repository_impl,
    environ = [_ENV_DIR, _ENV_LIB, _ENV_FETCH, _ENV_SHA],
    attrs = {
        "commit": attr.string(
            mandatory = True,
            doc = "The tflite-micro commit this project is built and tested against.",
        ),
        "sha256": attr.string(
            doc = "sha256 of the archive at `urls` (used only with TFLM_FETCH=1). " +
                  "Empty: Bazel downloads unchecked and prints the value to pin.",
        ),
        "urls": attr.string_list(
            default = ["https://github.com/tensorflow/tflite-micro/archive/{commit}.tar.gz"],
        ),
        "strip_prefix": attr.string(default = "tflite-micro-{commit}"),
    },
)
