# shellcheck shell=bash
# Real Spanish speech with reference texts, for testing Whisper's Spanish transcripts and
# translations (issue 12): Debian's Asterisk prompts in Mexican Spanish, one professional
# speaker, 8 kHz WAV (/usr/share/asterisk/sounds/es_MX_f_Allison/), transcripts in
# /usr/share/doc/asterisk-core-sounds-es/core-sounds-es.txt.gz. About 24 MB; no Asterisk.
# Sourced by scripts/setup.sh (helpers: install_apt, APT_PACKAGES).

APT_PACKAGES=(asterisk-core-sounds-es asterisk-core-sounds-es-wav)
install_apt
