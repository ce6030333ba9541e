#!/bin/sh
# Regenerates the bundled demo prompts (see README.md). Needs Debian's espeak-ng and sox.
set -eu
cd "$(dirname "$0")"
say() {  # say NAME WORDS_PER_MINUTE TEXT
    espeak-ng -v en-us -s "$2" -g 2 -w "/tmp/callengine-$1.wav" "$3"
    # 8 kHz mono 16-bit PCM; trim leading silence, shorten pauses to 0.2 s.
    sox "/tmp/callengine-$1.wav" -r 8000 -c 1 -b 16 -e signed-integer "$1.wav" \
        silence -l 1 0.02 0.5% -1 0.2 0.5%
    rm -f "/tmp/callengine-$1.wav"
}
say welcome 165 "Welcome to the callengine demo."
say menu 210 "For sales, press 1. For support, press 2. To leave a voicemail, press 3. For the operator, press 0."
say invalid 165 "Sorry, that is not a valid choice."
say timeout 165 "Sorry, I did not get that."
say goodbye 165 "Thank you for calling. Goodbye."
say voicemail_greeting 165 "Please leave a message after the tone."
say closed 165 "We are closed right now."
say transfer 165 "Please hold while we connect you."
