# Writes TeslaMate's environment file for `podman run --env-file` from systemd
# credentials, just before the container starts (ExecStartPre of
# podman-teslamate.service; ExecStopPost removes the file again).
#
#   write-env.sh FILE VARIABLE=CREDENTIAL...
#
# Each VARIABLE gets the content of $CREDENTIALS_DIRECTORY/CREDENTIAL, without
# one trailing newline. Podman's env-file format has no quoting: a line is
# VARIABLE=VALUE up to the end of the line, quotes included. So a value with a
# newline, carriage return or quote is refused (with the credential's name,
# never its value) instead of reaching TeslaMate altered.
set -eu
umask 077

file="$1"
shift
if [ -z "${CREDENTIALS_DIRECTORY:-}" ]; then
  echo "gridmate-teslamate: no \$CREDENTIALS_DIRECTORY (the unit must load its secrets with LoadCredential=)" >&2
  exit 1
fi

directory="$(dirname "$file")"
mkdir -p "$directory"
chmod 0700 "$directory"
partial="$file.partial"
# Never leave an older file behind when this one cannot be written.
rm -f "$file" "$partial"
: >"$partial"

for pair in "$@"; do
  variable="${pair%%=*}"
  credential="${pair#*=}"
  source="$CREDENTIALS_DIRECTORY/$credential"
  if [ ! -r "$source" ]; then
    rm -f "$partial"
    echo "gridmate-teslamate: the credential $credential (for $variable) is missing" >&2
    exit 1
  fi
  # $(...) drops every trailing newline; count what is left to tell "one
  # trailing newline" (fine) from a newline inside the value (refused).
  value="$(cat -- "$source"; printf x)"
  value="${value%x}"
  value="${value%
}"
  case "$value" in
    "")
      rm -f "$partial"
      echo "gridmate-teslamate: the credential $credential (for $variable) is empty" >&2
      exit 1
      ;;
    *"
"* | *"$(printf '\r')"* | *\"* | *\'*)
      rm -f "$partial"
      echo "gridmate-teslamate: the credential $credential (for $variable) contains a newline or a quote, which podman's --env-file cannot carry; choose a value without them" >&2
      exit 1
      ;;
  esac
  printf '%s=%s\n' "$variable" "$value" >>"$partial"
done
mv -f "$partial" "$file"
