# Sourced by every recipe in runs/: the one helper they share.
#
# `step CMD ARGS...` prints the command (shell-quoted, after "+ ", as `set -x` would) and
# runs it. With GPT2REPRO_DRY_RUN=1 it only prints: a recipe then shows its whole
# pipeline without running anything, and tests/integration/test_runs.py checks that
# every printed command parses.

GPT2REPRO_DRY_RUN="${GPT2REPRO_DRY_RUN:-0}"

step() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ "$GPT2REPRO_DRY_RUN" != 1 ]]; then
    "$@"
  fi
}

# `require CMD...`: stop at once, before hours of work, when a command is not on PATH.
require() {
  [[ "$GPT2REPRO_DRY_RUN" == 1 ]] && return 0
  local cmd
  for cmd in "$@"; do
    if ! command -v "$cmd" >/dev/null; then
      echo "error: $cmd is not on PATH. Run \`bash scripts/setup.sh\`, then \`source .venv/bin/activate\`." >&2
      exit 2
    fi
  done
}
