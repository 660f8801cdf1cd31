#!/usr/bin/env bash
# The installed package, as a user meets it: Omnibus is configured, built and installed into a
# temporary prefix; each installed header must compile on its own and none may include NATS.c;
# examples/hello is copied out of the source tree and built against that prefix only, with
# pkg-config and a plain compiler command, with meson and with CMake; then its worker and
# its publisher run against the loopback servers (OMNIBUS_NATS_URL, OMNIBUS_DATABASE_URL), and
# the async listener must handle the greeting. Then the same example, built with Omnibus as a
# meson subproject; then the Debian packages, installed with apt-get (root). Prints
# "install: ..." lines; exits non-zero on any failure.
#   run.sh <source root>
set -euo pipefail
src=$(cd "$1" && pwd)
: "${OMNIBUS_NATS_URL:?start the servers first: eval \"\$(scripts/servers start)\"}"
: "${OMNIBUS_DATABASE_URL:?start the servers first}"
# A stream and schema of this run's own, so no other test's (or earlier run's) events show up.
tag="install_$$_$RANDOM"
export OMNIBUS_STREAM="$tag" OMNIBUS_SUBJECT_PREFIX="$tag" OMNIBUS_SCHEMA="$tag"
work=$(mktemp -d /tmp/omnibus-install-XXXXXX)
worker_pid=
debs_installed=
# Deletes a stream through the JetStream API over the plain NATS protocol (the installed
# package has no stream command, and a file-stored stream would outlive this run).
delete_stream() {
  local hostport=${OMNIBUS_NATS_URL#nats://}
  hostport=${hostport%%,*}
  exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" || return 0
  printf 'CONNECT {"verbose":false}\r\nSUB _INBOX.cleanup 1\r\nPUB $JS.API.STREAM.DELETE.%s _INBOX.cleanup 0\r\n\r\n' "$1" >&3
  timeout 5 grep -m1 -q 'MSG _INBOX.cleanup' <&3 || true
  exec 3>&-
}
cleanup() {
  if [ -n "$worker_pid" ]; then kill "$worker_pid" 2>/dev/null || true; fi
  (delete_stream "$tag"; delete_stream "${tag}_ABANDONED") 2>/dev/null || true
  psql -q "$OMNIBUS_DATABASE_URL" -c "DROP SCHEMA IF EXISTS \"$tag\" CASCADE" >/dev/null 2>&1 || true
  if [ -n "$debs_installed" ]; then apt-get remove -y -qq libomnibus-dev libomnibus0.2 >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
say() { echo "install: $* (at ${SECONDS} s)"; }

start=$(date +%s)
# Unoptimized (buildtype plain, DEB_BUILD_OPTIONS=noopt below): this suite checks what is
# installed and how a user builds on it, not its speed, and its three builds of the library
# at -O2/-O3 took most of its ten minutes on CI's two cores.
meson setup "$work/omnibus-build" "$src" --prefix "$work/prefix" --buildtype=plain \
  -Dtests=disabled -Dexamples=disabled -Dbenchmarks=false >"$work/setup.log" 2>&1 \
  || { cat "$work/setup.log"; exit 1; }
meson install -C "$work/omnibus-build" >"$work/install.log" 2>&1 || { tail -n 40 "$work/install.log"; exit 1; }
pc=$(find "$work/prefix" -name omnibus.pc)
[ -n "$pc" ] || { echo "install: no omnibus.pc was installed" >&2; exit 1; }
export PKG_CONFIG_PATH
PKG_CONFIG_PATH=$(dirname "$pc")
libdir=$(pkg-config --variable=libdir omnibus)
say "installed $(pkg-config --modversion omnibus) into a temporary prefix in $(( $(date +%s) - start )) s"
if find "$work/prefix/include" -name '*.hpp' -print0 | xargs -0 grep -l -E '#include [<"]nats/' ; then
  echo "install: an installed header includes NATS.c" >&2; exit 1
fi

# Each installed header compiles on its own: none leans on another include before it (one
# compiler per core).
check_header() {
  # shellcheck disable=SC2046
  echo "#include <omnibus/$1>" | g++ -std=c++20 -Wall -Wextra -Wpedantic -Werror -fsyntax-only -x c++ - \
    $(pkg-config --cflags omnibus) || { echo "install: <omnibus/$1> does not compile on its own" >&2; exit 1; }
}
export -f check_header
(cd "$work/prefix/include/omnibus" && printf '%s\0' *.hpp) | xargs -0 -n 1 -P "$(nproc)" bash -c 'check_header "$1"' _
say "each of the $(ls "$work"/prefix/include/omnibus/*.hpp | wc -l) installed headers compiles on its own"

# An event type's header and a service header's forward declarations stay light: no msgpack,
# no Boost (those come with omnibus/event_bus.hpp, in the .cpp files that publish or listen).
for light in event.hpp fwd.hpp; do
  # shellcheck disable=SC2046
  if echo "#include <omnibus/$light>" | g++ -std=c++20 -H -fsyntax-only -x c++ - $(pkg-config --cflags omnibus) 2>&1 \
      | grep -E '^\.+ .*/(msgpack|boost)/'; then
    echo "install: <omnibus/$light> pulls in msgpack or Boost" >&2; exit 1
  fi
done
say "<omnibus/event.hpp> and <omnibus/fwd.hpp> include neither msgpack nor Boost"

# The ABI is what the headers say: the libraries are built with hidden visibility, so none of
# the internals (SQL store, connection pool, failpoints, NATS.c glue, settle rules) is exported.
exported=$(nm -D --defined-only -C "$libdir"/libomnibus*.so | grep -c ' omnibus::' || true)
leaked=$(nm -D --defined-only -C "$libdir"/libomnibus*.so | grep -E \
  'connection_pool|pg_store|pg_session|lazy_connection|jetstream_consumer|abandoned_consumer|omnibus::detail::(failpoint|table_name|with_schema|make_pg_store|claim_inbox|before_handler|after_decode_error|parse_header_block|wait_for)|nats_connection::impl::' || true)
if [ -n "$leaked" ]; then echo "install: internal symbols are exported:" >&2; echo "$leaked" >&2; exit 1; fi
say "the libraries export $exported omnibus symbols, none of them internal"

cp -r "$src/examples/hello" "$work/hello"
cd "$work/hello"

# 1. pkg-config and a plain compiler command.
# shellcheck disable=SC2046
g++ -std=c++20 -Wall -Wextra -Werror publisher.cpp -o hello-publisher $(pkg-config --cflags --libs omnibus) -Wl,-rpath,"$libdir"
# shellcheck disable=SC2046
g++ -std=c++20 -Wall -Wextra -Werror worker.cpp -o hello-worker $(pkg-config --cflags --libs omnibus) -Wl,-rpath,"$libdir"
say "examples/hello built with pkg-config"

# 2. meson, finding the installed omnibus.pc.
LD_RUN_PATH=$libdir meson setup build-meson >"$work/hello-setup.log" 2>&1 || { cat "$work/hello-setup.log"; exit 1; }
meson compile -C build-meson >"$work/hello-compile.log" 2>&1 || { cat "$work/hello-compile.log"; exit 1; }
say "examples/hello built with meson against the installed package"

# 3. CMake's find_package(Omnibus 0.2), with only the prefix to look in.
cmake -S . -B build-cmake -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCMAKE_INSTALL_RPATH_USE_LINK_PATH=ON >"$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; exit 1; }
cmake --build build-cmake >>"$work/cmake.log" 2>&1 || { tail -n 40 "$work/cmake.log"; exit 1; }
say "examples/hello built with CMake find_package(Omnibus 0.2)"

# Waits up to $2 seconds for the text $1 in the worker's log.
wait_for() {
  for _ in $(seq 1 $(( $2 * 10 ))); do
    if grep -q -- "$1" "$work/worker.log"; then return 0; fi
    if ! kill -0 "$worker_pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "install: the worker did not print '$1' within $2 s; its log:" >&2
  cat "$work/worker.log" >&2
  exit 1
}

# Runs worker $1 and publisher $2; the greeting must reach the async listener.
run_pair() {
  : >"$work/worker.log"
  LD_LIBRARY_PATH=$libdir "$1" run >"$work/worker.log" 2>&1 &
  worker_pid=$!
  wait_for "listener(s)" 30
  local who="world-$RANDOM"
  LD_LIBRARY_PATH=$libdir "$2" "$who" >"$work/publisher.log" 2>&1
  grep -q "sync listener: about to greet $who" "$work/publisher.log" \
    && grep -q "after-commit listener: $who's greeting is on its way" "$work/publisher.log" \
    || { echo "install: the publisher's listeners did not run; its output:" >&2; cat "$work/publisher.log" >&2; exit 1; }
  wait_for "hello, $who" 20
  wait_for "visit 3 of $who" 20
  grep "of $who\$" "$work/worker.log" | tr '\n' ' ' | grep -q "visit 1 of $who visit 2 of $who visit 3 of $who" \
    || { echo "install: the visits of $who did not run in order:" >&2; cat "$work/worker.log" >&2; exit 1; }
  kill -TERM "$worker_pid"
  wait "$worker_pid" || { echo "install: the worker did not exit 0 on SIGTERM" >&2; cat "$work/worker.log" >&2; exit 1; }
  worker_pid=
}
run_pair ./hello-worker ./hello-publisher
say "pkg-config build: the publisher's greeting reached the worker's async listener"
# The operator commands come with worker_main.
LD_LIBRARY_PATH=$libdir ./hello-worker dead-letters list | grep -q "0 dead letter(s)"
LD_LIBRARY_PATH=$libdir ./hello-worker consumers list | grep -q "${OMNIBUS_GROUP:-hello}_greeter"
set +e
LD_LIBRARY_PATH=$libdir ./hello-worker --log-level loud run >/dev/null 2>&1
rc=$?
set -e
[ "$rc" -eq 2 ] || { echo "install: a bad --log-level exited $rc, not 2" >&2; exit 1; }
# Its recurring schedule was registered by the run, and cron expressions preview offline.
LD_LIBRARY_PATH=$libdir ./hello-worker schedules list | grep -q 'morning_greeting *"0 9 \* \* \*" Europe/Berlin' \
  || { echo "install: schedules list does not show morning_greeting" >&2; LD_LIBRARY_PATH=$libdir ./hello-worker schedules list >&2; exit 1; }
preview=$(LD_LIBRARY_PATH=$libdir ./hello-worker schedules preview "0 9 * * *" --tz Europe/Berlin --from 2026-07-01T00:00:00Z --count 2)
[ "$preview" = "$(printf '2026-07-01T07:00:00Z\n2026-07-02T07:00:00Z')" ] \
  || { echo "install: schedules preview printed: $preview" >&2; exit 1; }
say "hello-worker dead-letters list, consumers list, schedules list and preview, and its configuration errors work"
# The dashboard comes with worker_main too, its files compiled into the installed library.
: >"$work/worker.log"
LD_LIBRARY_PATH=$libdir ./hello-worker run --http 127.0.0.1:0 >"$work/worker.log" 2>&1 &
worker_pid=$!
wait_for "/readyz on port " 30
port=$(grep -o '/readyz on port [0-9]*' "$work/worker.log" | grep -o '[0-9]*$')
http_get() {  # bash's /dev/tcp: nothing more to install
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$1" "$port" >&3
  timeout 20 cat <&3  # the worker closes an HTTP/1.0 answer; a stalled page must not hang the test
  exec 3<&-
}
page=$(http_get /)
grep -q 'HTTP/1.0 200' <<<"$page" && grep -q 'data-listener="greeter"' <<<"$page" \
  || { echo "install: the dashboard's overview did not show the greeter:" >&2; echo "$page" | head -20 >&2; exit 1; }
grep -q "^Content-Type: text/javascript" <<<"$(http_get /assets/app.js | tr -d '\r')" \
  || { echo "install: the dashboard's script is not served" >&2; exit 1; }
kill -TERM "$worker_pid"
wait "$worker_pid" || { echo "install: the worker did not exit 0 on SIGTERM" >&2; cat "$work/worker.log" >&2; exit 1; }
worker_pid=
say "hello-worker run --http serves the dashboard from the installed library"
run_pair ./build-meson/hello-worker ./build-meson/hello-publisher
say "meson build: the publisher's greeting reached the worker's async listener"
run_pair ./build-cmake/hello-worker ./build-cmake/hello-publisher
say "CMake build: the publisher's greeting reached the worker's async listener"

# 4. Omnibus as a meson subproject: none of its tests, examples or benchmarks get built.
mkdir -p subprojects
ln -s "$src" subprojects/omnibus
cat >meson.build.sub <<'MESON'
project('hello', 'cpp', default_options: ['cpp_std=c++20', 'warning_level=3', 'werror=true'])
omnibus = dependency('omnibus', version: '>=0.2', fallback: ['omnibus', 'omnibus_dep'])
executable('hello-publisher', 'publisher.cpp', dependencies: omnibus)
executable('hello-worker', 'worker.cpp', dependencies: omnibus)
MESON
mv meson.build.sub meson.build
PKG_CONFIG_PATH= meson setup build-sub --buildtype=plain --wrap-mode=forcefallback >"$work/sub-setup.log" 2>&1 || { cat "$work/sub-setup.log"; exit 1; }
targets=$(ninja -C build-sub -t targets all | grep -c -E '^subprojects/omnibus/(tests/|services/|worker/omnibus-)' || true)
[ "$targets" -eq 0 ] || { echo "install: as a subproject, Omnibus still builds $targets of its own test/demo targets" >&2; exit 1; }
meson compile -C build-sub >"$work/sub-compile.log" 2>&1 || { tail -n 40 "$work/sub-compile.log"; exit 1; }
run_pair ./build-sub/hello-worker ./build-sub/hello-publisher
say "meson subproject: built without Omnibus's tests or examples; the greeting reached the worker"

# 5. The Debian packages (scripts/package, lintian clean), installed on this machine with
#    apt-get, the example built against the system install; removed again at the end.
if [ "$(id -u)" -ne 0 ]; then echo "install: the .deb test installs packages: run it as root" >&2; exit 1; fi
DEB_BUILD_OPTIONS="noopt ${DEB_BUILD_OPTIONS:-}" "$src/scripts/package" >"$work/package.log" 2>&1 || { cat "$work/package.log"; exit 1; }
debs_installed=1
apt-get install -y -qq "$src"/dist/libomnibus0.2_*.deb "$src"/dist/libomnibus-dev_*.deb >"$work/apt.log" 2>&1 \
  || { cat "$work/apt.log"; exit 1; }
say "$(grep '^package: lintian' "$work/package.log"); libomnibus0.2 and libomnibus-dev installed with apt-get"
mkdir "$work/hello-deb"
cp "$src"/examples/hello/*.hpp "$src"/examples/hello/*.cpp "$src"/examples/hello/CMakeLists.txt "$work/hello-deb"
cd "$work/hello-deb"
unset PKG_CONFIG_PATH
# shellcheck disable=SC2046
g++ -std=c++20 -Wall -Wextra -Werror publisher.cpp -o hello-publisher $(pkg-config --cflags --libs omnibus)
# shellcheck disable=SC2046
g++ -std=c++20 -Wall -Wextra -Werror worker.cpp -o hello-worker $(pkg-config --cflags --libs omnibus)
cmake -S . -B build-cmake >"$work/cmake-deb.log" 2>&1 && cmake --build build-cmake >>"$work/cmake-deb.log" 2>&1 \
  || { cat "$work/cmake-deb.log"; exit 1; }
libdir=
run_pair ./hello-worker ./hello-publisher
run_pair ./build-cmake/hello-worker ./build-cmake/hello-publisher
say "Debian packages: examples/hello built against the system install (pkg-config, CMake) and ran"
say "passed in $(( $(date +%s) - start )) s"
