#!/usr/bin/env bash
# Print `export` lines that hand uv the local wheel folders and package indexes
# that pip is configured with (uv ignores pip's configuration). Only folders
# that exist are passed, so the same Makefile works on any machine.
set -u
links=()
indexes=()
while IFS= read -r line; do
    key=${line%%=*}
    val=${line#*=}
    val=${val#\'}; val=${val%\'}
    case "$key" in
        *find-links)
            for v in $val; do [ -d "$v" ] && links+=("$v"); done ;;
        *extra-index-url|*index-url)
            for v in $val; do
                p=${v#file://}
                if [ "$p" != "$v" ]; then [ -d "$p" ] && indexes+=("$v"); else indexes+=("$v"); fi
            done ;;
    esac
done < <(pip config list 2>/dev/null || python3 -m pip config list 2>/dev/null)
# de-duplicate
uniq() { printf '%s\n' "$@" | awk 'NF && !seen[$0]++' | paste -sd' ' -; }
[ ${#links[@]} -gt 0 ] && echo "export UV_FIND_LINKS='$(uniq "${links[@]}" | tr ' ' ',')'"
[ ${#indexes[@]} -gt 0 ] && echo "export UV_EXTRA_INDEX_URL='$(uniq "${indexes[@]}")'" && echo "export UV_INDEX_STRATEGY=unsafe-best-match"
exit 0
