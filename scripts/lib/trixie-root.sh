# Debian root folders for building diffuse against another LibTorch (sourced by
# scripts/test-libtorch2.sh and scripts/check-cuda-build.sh; needs root, mmdebstrap, unshare).
#
#   troot_need_tools                            check for root; install mmdebstrap if missing
#   troot_ensure ROOT SUITE COMPONENTS PKG...   make ROOT (or reuse it, installing what is missing)
#   troot_run ROOT [-b HOST:DIR[:ro]]... [-e VAR=VALUE]... -- CMD...   run CMD inside ROOT
#
# troot_run (and mmdebstrap, while it makes a root) mount /proc, /sys, /dev and the -b folders in
# a private mount namespace of their own: nothing is ever mounted on the host, and every mount
# goes away with the namespace when CMD ends however it ends (error, Ctrl-C, kill -9); a trap
# unmounts them explicitly as well. A root is made
# in ROOT.partial and renamed only once complete, with the package list in ROOT/.diffuse-root, so
# an interrupted creation is simply made again.

troot_log() { printf '%s: %s\n' "${TROOT_TAG:-root}" "$*" >&2; }
troot_die() { troot_log "error: $*"; exit 1; }

# Seconds that the last troot_ensure spent making or updating its root (0 when reused as it was).
TROOT_SECONDS=0
TROOT_STATE=""

troot_need_tools() {
  [[ $(id -u) == 0 ]] || troot_die "needs root (mmdebstrap, mount, chroot)"
  command -v unshare >/dev/null || troot_die "unshare (util-linux) is missing"
  if ! command -v mmdebstrap >/dev/null; then
    troot_log "installing mmdebstrap"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
  fi
}

# Refuses to delete a folder that has anything mounted under it (it never should: see above).
_troot_remove() {
  local dir
  dir=$(realpath -m "$1")
  [[ -e $dir ]] || return 0
  if awk -v d="$dir/" '{ if (index($5 "/", d) == 1) found = 1 } END { exit !found }' /proc/self/mountinfo; then
    troot_die "something is mounted under $dir; unmount it first (findmnt -R $dir)"
  fi
  rm -rf --one-file-system "$dir"
}

# The package name of a list entry: a name, or a path to a local .deb.
_troot_name() {
  if [[ $1 == *.deb ]]; then dpkg-deb -f "$1" Package; else printf '%s\n' "$1"; fi
}

troot_ensure() {
  local root=$1 suite=$2 components=$3
  shift 3
  local want=("$@") stamp="$root/.diffuse-root" start=$SECONDS
  troot_need_tools
  if [[ -f $stamp ]]; then
    local missing=() p
    for p in "${want[@]}"; do
      grep -qxF "$(_troot_name "$p")" "$stamp" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
      TROOT_SECONDS=0 TROOT_STATE="reused"
      troot_log "reusing $root ($(head -1 "$stamp"))"
      return 0
    fi
    troot_log "adding to $root: ${missing[*]}"
    local args=() debs=()
    for p in "${missing[@]}"; do
      if [[ $p == *.deb ]]; then
        mkdir -p "$root/tmp/troot-debs" && cp "$p" "$root/tmp/troot-debs/"
        args+=("/tmp/troot-debs/$(basename "$p")")
      else
        args+=("$p")
      fi
    done
    troot_run "$root" -b /etc/resolv.conf:/etc/resolv.conf:ro -e DEBIAN_FRONTEND=noninteractive -- \
      sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null && apt-get clean' \
      sh "${args[@]}" || troot_die "installing ${missing[*]} into $root failed"
    rm -rf "$root/tmp/troot-debs"
    for p in "${missing[@]}"; do _troot_name "$p" >>"$stamp"; done
    TROOT_SECONDS=$((SECONDS - start)) TROOT_STATE="updated"
    return 0
  fi

  [[ -e $root ]] && { troot_log "removing incomplete $root"; _troot_remove "$root"; }
  local partial="$root.partial" log="$root.log"
  _troot_remove "$partial"
  mkdir -p "$(dirname "$root")"
  troot_log "making $root: Debian $suite ($components) with ${#want[@]} packages (log: $log)"
  # Package names in one --include, each local .deb in its own (mmdebstrap does not split paths).
  local names=() include=() p
  for p in "${want[@]}"; do
    if [[ $p == *.deb ]]; then include+=("--include=$(realpath "$p")"); else names+=("$p"); fi
  done
  # dpkg runs inside the new root: the file-mirror-automount hook makes the .debs visible there.
  ((${#include[@]})) && include+=(--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount)
  include=("--include=$(IFS=,; echo "${names[*]}")" "${include[@]}")
  # mmdebstrap mounts /dev, /proc, /sys in the new root while it works: in a private mount
  # namespace those mounts can never outlive it on the host, even when it is killed.
  if ! unshare --mount --propagation private -- mmdebstrap --variant=apt --components="$components" "${include[@]}" \
         --aptopt='APT::Install-Recommends "false"' "$suite" "$partial" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    _troot_remove "$partial"
    troot_die "mmdebstrap failed (whole log: $log)"
  fi
  {
    echo "Debian $suite ($components), made $(date -u +%FT%TZ) by ${TROOT_TAG:-troot_ensure}"
    for p in "${want[@]}"; do _troot_name "$p"; done
  } >"$partial/.diffuse-root"
  mv "$partial" "$root"
  TROOT_SECONDS=$((SECONDS - start)) TROOT_STATE="made"
  troot_log "made $root in ${TROOT_SECONDS}s ($(du -sh --one-file-system "$root" | cut -f1))"
}

# Runs inside the new mount namespace (shipped there with declare -f).
_troot_enter() {
  set -euo pipefail
  local root=$1 nb=$2
  shift 2
  local binds=("${@:1:nb}")
  shift "$nb"
  local ne=$1
  shift
  local envs=("${@:1:ne}")
  shift "$ne"
  _troot_mounted=()  # global: the EXIT trap runs after this function has returned
  _troot_umount() {
    local i
    for ((i = ${#_troot_mounted[@]} - 1; i >= 0; i--)); do
      umount -R "${_troot_mounted[i]}" 2>/dev/null || umount -R -l "${_troot_mounted[i]}" 2>/dev/null || true
    done
  }
  trap _troot_umount EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # Without /proc LibTorch's CPU detection fails (oneDNN then dies on 'pack_vnni2').
  mount -t proc proc "$root/proc" && _troot_mounted+=("$root/proc")
  mount --rbind /sys "$root/sys" && _troot_mounted+=("$root/sys")
  mount --rbind /dev "$root/dev" && _troot_mounted+=("$root/dev")
  local b src dst opt
  for b in "${binds[@]}"; do
    IFS=: read -r src dst opt <<<"$b"
    [[ -e $src ]] || { echo "troot_run: $src does not exist" >&2; exit 1; }
    if [[ -d $src ]]; then mkdir -p "$root$dst"; else [[ -e $root$dst ]] || : >"$root$dst"; fi
    mount --bind "$src" "$root$dst" && _troot_mounted+=("$root$dst")
    if [[ $opt == ro ]]; then mount -o remount,bind,ro "$root$dst"; fi
  done
  local rc=0
  chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" "${envs[@]}" "$@" || rc=$?
  return "$rc"
}

troot_run() {
  local root=$1
  shift
  local binds=() envs=()
  while (($#)); do
    case $1 in
      -b) binds+=("$2"); shift 2 ;;
      -e) envs+=("$2"); shift 2 ;;
      --) shift; break ;;
      *) break ;;
    esac
  done
  [[ -f $root/.diffuse-root || -x $root/usr/bin/env ]] || troot_die "$root is no root folder"
  unshare --mount --propagation private -- /bin/bash -c "$(declare -f _troot_enter); _troot_enter \"\$@\"" \
    troot "$(realpath "$root")" "${#binds[@]}" "${binds[@]}" "${#envs[@]}" "${envs[@]}" "$@"
}
