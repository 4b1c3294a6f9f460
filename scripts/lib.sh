# Shared helpers for the scripts. Sourced, not run.

# pingora's zlib-ng build needs cmake and a C compiler. Install them when we can (root or
# passwordless sudo, Debian), otherwise stop with one line saying what to install, instead of
# letting a build script panic half-way through a build.
ensure_build_deps() {
  local missing=()
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v cc >/dev/null 2>&1 || missing+=(gcc)
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; else sudo="none"; fi
  fi
  if [ "$sudo" != "none" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing build dependencies: ${missing[*]}" >&2
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "portcullis needs ${missing[*]} to build (Debian/Ubuntu: apt-get install -y ${missing[*]}); install it and run this again" >&2
    exit 1
  fi
}
