# Sourced by train.sh and test.sh: `ensure_venv REQUIREMENTS` makes .venv hold the pinned
# REQUIREMENTS and the package, running pip only when .venv was made from other files.
ensure_venv() {
  local requirements=$1 stamp=.venv/vgg_flax-installed wanted
  wanted="$requirements $(cat "$requirements" setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ] && return 0
  rm -f "$stamp"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r "$requirements"
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$wanted" > "$stamp"
}
