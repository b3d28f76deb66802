#!/bin/sh
# gridtool-dom0-storage: attach the lab's shared storage from a dom0's own kernel.
#
# Everything comes from the kernel command line (the lab sets it per host, see
# gridtool/lab/dom0storage.py), so one image serves every host of every lab:
#   gridtool.seg=MAC,ADDR/PREFIX     the NIC on the lab's L2 segment (by MAC) and its address
#   gridtool.aoe=1                   load aoe on that NIC only; discover: /dev/etherd/eS.P
#   gridtool.iscsi=PORTAL,TARGET,IQN log in to TARGET at PORTAL (IP:PORT) as initiator IQN:
#                                    /dev/disk/by-path/ip-PORTAL-iscsi-TARGET-lun-N
# It prints one line per result on stdout, for the console and the tests:
#   GRIDTOOL-STORAGE seg IF ADDR | aoe DEVICE... | iscsi DEVICE... | error WHAT
# and exits non-zero when a requested part failed. Runs under busybox sh and dash.
set -u
CMDLINE=${GRIDTOOL_CMDLINE:-/proc/cmdline}  # these two are others only in the unit tests
ISCSI_ETC=${GRIDTOOL_ISCSI_ETC:-/etc/iscsi}
WAIT=${GRIDTOOL_STORAGE_WAIT:-60}  # seconds for devices to appear (TCG: slow udev)
say() { echo "GRIDTOOL-STORAGE $*"; }
fail() { say "error $*"; status=1; }
status=0

arg() {  # the value of kernel parameter $1 ('' if absent)
  for word in $(cat "$CMDLINE"); do
    case $word in "$1="*) echo "${word#*=}"; return;; esac
  done
}

wait_for() {  # wait_for GLOB: up to $WAIT s for a path matching GLOB; prints the matches
  n=0
  while [ $n -lt $((WAIT * 10)) ]; do
    for p in $1; do [ -e "$p" ] && { echo $1; return 0; }; done
    usleep 100000 2>/dev/null || sleep 0.1
    n=$((n + 1))
  done
  return 1
}

seg=$(arg gridtool.seg)
iface=
if [ -n "$seg" ]; then
  mac=${seg%%,*}; addr=${seg#*,}
  for dev in /sys/class/net/*; do
    [ "$(cat "$dev/address" 2>/dev/null)" = "$mac" ] && iface=${dev##*/}
  done
  if [ -z "$iface" ]; then
    fail "no NIC with MAC $mac"
  else
    ip link set "$iface" up && ip addr add "$addr" dev "$iface" 2>/dev/null
    say "seg $iface $addr"
  fi
fi

if [ "$(arg gridtool.aoe)" = 1 ] && [ -n "$iface" ]; then
  if ! modprobe aoe aoe_iflist="$iface"; then
    fail "modprobe aoe"
  else
    if command -v aoe-discover >/dev/null; then aoe-discover
    else wait_for /dev/etherd/discover >/dev/null && echo > /dev/etherd/discover; fi
    if found=$(wait_for '/dev/etherd/e*.*'); then say "aoe $found"
    else fail "no AoE device within $WAIT s"; fi
  fi
fi

iscsi=$(arg gridtool.iscsi)
if [ -n "$iscsi" ]; then
  portal=${iscsi%%,*}; rest=${iscsi#*,}; target=${rest%%,*}; iqn=${rest#*,}
  if ! command -v iscsiadm >/dev/null; then
    fail "iscsiadm missing (open-iscsi)"
  else
    mkdir -p "$ISCSI_ETC"
    echo "InitiatorName=$iqn" > "$ISCSI_ETC/initiatorname.iscsi"
    command -v systemctl >/dev/null && systemctl restart iscsid 2>/dev/null
    if iscsiadm -m discovery -t sendtargets -p "$portal" >/dev/null \
        && iscsiadm -m node -T "$target" -p "$portal" --login >/dev/null; then
      if found=$(wait_for "/dev/disk/by-path/ip-$portal-iscsi-$target-lun-*"); then
        say "iscsi $found"
      else
        fail "no iSCSI LUN of $target within $WAIT s"
      fi
    else
      fail "iscsiadm login to $target at $portal"
    fi
  fi
fi
exit $status
