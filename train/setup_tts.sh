#!/bin/sh
# Install the offline TTS engines, voices and public-domain text used by the recipe.
# Debian 12 (bookworm). contrib/non-free packages are installed through a private
# sources file so the system's apt configuration is left untouched.
set -eu
[ "$(id -u)" = 0 ] || { echo "run as root (apt-get install)" >&2; exit 1; }
APTDIR=${APTDIR:-/var/tmp/wavlm-stream-apt}
mkdir -p "$APTDIR/lists/partial"
cat > "$APTDIR/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main contrib non-free
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main contrib non-free
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main contrib non-free
SRC
APT="-o Dir::Etc::sourcelist=$APTDIR/sources.list -o Dir::Etc::sourceparts=/nonexistent -o Dir::State::Lists=$APTDIR/lists"
# shellcheck disable=SC2086
apt-get $APT update
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get $APT install -y --no-install-recommends \
  sox espeak-ng flite \
  mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 \
  mbrola-de4 mbrola-fr1 mbrola-nl2 mbrola-af1 mbrola-sw2 \
  mbrola-de1 mbrola-de2 mbrola-de3 mbrola-de5 mbrola-de6 mbrola-fr4 \
  mbrola-gr2 mbrola-hu1 mbrola-pl1 mbrola-ro1 mbrola-sw1 \
  festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \
  festvox-rablpc16k festvox-don festvox-us1 festvox-us2 festvox-us3 festvox-en1 \
  libttspico-utils libttspico-data \
  rhvoice rhvoice-english \
  diatheke sword-text-web bible-kjv-text fortunes fortunes-min
