# Sourced by proxies.sh, tails.sh and profile.sh: the cargo profile a benchmark builds with.
#
#   bench_profile NAME    sets `profile`, the folder under the target directory the binaries
#                         land in, and `profile_flag`, cargo build's flags for NAME
#
# cargo's `dev` profile builds into target/debug, and `debug` is taken to mean it.
bench_profile() {
  case "$1" in
    debug | dev) profile=debug; profile_flag=() ;;
    *) profile="$1"; profile_flag=(--profile "$1") ;;
  esac
}
