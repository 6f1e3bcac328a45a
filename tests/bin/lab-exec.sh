# Sourced by the demo scripts: cm ARGS... runs `docker exec ARGS...` on the
# lab's central manager host ($host).
# An exec into a nested container now and then fails to start ("OCI runtime
# exec failed ... init-p: connection reset by peer"): try it again.
# The inner engine's message arrives on stdout or stderr.
cm() {
    local out err rc
    for attempt in 1 2 3 4 5; do
        out=$(mktemp) err=$(mktemp)
        rc=0
        docker exec "$host" docker exec "$@" >"$out" 2>"$err" || rc=$?
        if [ "$rc" -ne 0 ] && grep -q 'OCI runtime exec failed' "$out" "$err" && [ "$attempt" -lt 5 ]; then
            rm -f "$out" "$err"; sleep "$attempt"; continue
        fi
        cat "$out"; cat "$err" >&2; rm -f "$out" "$err"
        return "$rc"
    done
}
