#!/usr/bin/env bash
# The generated secrets docker-compose.yml needs, written once into .env (0600) beside it:
# Redis's password, PostgreSQL's password and the platform secret key. Run again, it keeps
# what is there (a new secret key would leave every sealed value unreadable).
set -euo pipefail
cd "$(dirname "$0")/.."
env_file=.env
touch "$env_file"
chmod 600 "$env_file"
add() {  # $1 name, $2 command printing a fresh value
  grep -q "^$1=" "$env_file" || printf '%s=%s\n' "$1" "$($2)" >> "$env_file"
}
hex() { python3 -c 'import secrets; print(secrets.token_hex(32))'; }
fernet_key() { python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'; }
add PAAS_REDIS_PASSWORD hex
add PAAS_POSTGRES_PASSWORD hex
add PAAS_SECRET_KEY fernet_key
echo "compose-env: secrets are in $env_file (mode 0600); keep a copy of PAAS_SECRET_KEY safe."
