#!/usr/bin/env bash
# The scope of deny.toml's exception for RUSTSEC-2023-0071 (rsa, Marvin): RSA private keys and
# private-key operations only in core/src/support/mint.rs (native builds: the CLI's test tokens)
# and in tests. Anything else that names one fails `make audit`: the exception would no longer
# hold, and the advisory must be looked at again.
set -euo pipefail
cd "$(dirname "$0")/.."
pattern='RsaPrivateKey|rsa::Oaep|Pkcs1v15Encrypt|DecryptingKey|rsa::pkcs1v15::SigningKey|rsa::pss::SigningKey|BlindedSigningKey|\.decrypt\(|sign_with_rng'
hits=$(grep -rnE "$pattern" --include='*.rs' core/src filter/src cli/src \
	| grep -v '^core/src/support/mint\.rs:' \
	| grep -vE '^[^:]+/tests?/|^[^:]+:[0-9]+:\s*//' || true)
# Unit tests inside a source file (`#[cfg(test)] mod tests`) may sign: a hit after the file's
# test module starts is allowed.
offending=""
while IFS= read -r hit; do
	[ -n "$hit" ] || continue
	file=${hit%%:*}; rest=${hit#*:}; line=${rest%%:*}
	tests_start=$(grep -n '^#\[cfg(test)\]' "$file" | head -n 1 | cut -d: -f1 || true)
	if [ -z "$tests_start" ] || [ "$line" -lt "$tests_start" ]; then
		offending+="$hit"$'\n'
	fi
done <<< "$hits"
if [ -n "$offending" ]; then
	echo "audit: RSA private-key code outside core/src/support/mint.rs and the tests:" >&2
	printf '%s' "$offending" >&2
	echo "audit: deny.toml's exception for RUSTSEC-2023-0071 assumes there is none; review it" >&2
	exit 1
fi
echo "audit: RSA private keys only in core/src/support/mint.rs and tests (RUSTSEC-2023-0071 scope holds)"
