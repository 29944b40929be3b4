#!/bin/sh
# Build the self-contained release in _rel/amoc: a virtualenv with amoc, its
# dependencies and scenarios/requirements.txt, the scenarios, priv/app.config and
# the launcher bin/amoc.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
REL=${REL:-$ROOT/_rel/amoc}
# Reports live beside the release, so that a rebuild keeps them; the release's reports/
# links there.
REPORTS=${REPORTS:-$(dirname "$REL")/reports}
PYTHON=${PYTHON:-python3}

for pidfile in "$REL"/run/*/node.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        echo "release: a node of $REL is running (pid $pid); stop it first (bin/amoc stop)" >&2
        exit 1
    fi
done

# The report's charting library goes into the package before it is installed.
"$PYTHON" "$ROOT/tools/fetch_echarts.py"
rm -rf "$REL"
mkdir -p "$REL/bin" "$REL/priv/scenarios" "$REL/log" "$REL/run"
"$PYTHON" -m venv "$REL/venv"
"$REL/venv/bin/pip" install --quiet --disable-pip-version-check \
    "$ROOT" -r "$ROOT/scenarios/requirements.txt"
cp -r "$ROOT/scenarios" "$REL/scenarios"
cp "$ROOT/priv/app.config" "$REL/priv/app.config"
cat > "$REL/bin/amoc" <<'LAUNCHER'
#!/bin/sh
# amoc launcher: console | start | attach | stop | status | run (see --help)
AMOC_HOME=$(cd "$(dirname "$0")/.." && pwd -P)
export AMOC_HOME
exec "$AMOC_HOME/venv/bin/python" -P -m amoc.cli "$@"
LAUNCHER
chmod 755 "$REL/bin/amoc"
chmod 700 "$REL/run"
mkdir -p "$REPORTS"
chmod 700 "$REPORTS"
ln -s "$REPORTS" "$REL/reports"
echo "release built in $REL ($("$REL/venv/bin/python" -P -c 'import amoc; print("amoc", amoc.__version__)'))"
