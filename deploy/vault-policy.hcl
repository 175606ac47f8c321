# What draftd needs of Vault/OpenBao, with the default mounts ([vault] kv_mount = "draft",
# database_mount = "database", database_connection = "draftd"). Stand databases and their roles are
# named draft_<branch-slug> (the namespace with _ for -).
#
#   bao policy write draftd deploy/vault-policy.hcl
#
# tests/it/credentials.rs signs in by AppRole with exactly this policy and runs a stand's whole life.

# The apps' secrets: read only, at draft/<team>/<service>.
path "draft/data/*" {
  capabilities = ["read"]
}

# The connection to the stand database server, (re)written by the database step.
path "database/config/draftd" {
  capabilities = ["create", "update", "read"]
}

# One role per stand, and its dynamic credentials.
path "database/roles/draft_*" {
  capabilities = ["create", "update", "read", "delete"]
}
path "database/creds/draft_*" {
  capabilities = ["read"]
}

# Keeping leases alive, and revoking them: one by one, and every lease of a stand's role at teardown
# (revoke-prefix and lookup need sudo, as Vault documents).
path "sys/leases/renew" {
  capabilities = ["update"]
}
path "sys/leases/revoke" {
  capabilities = ["update"]
}
path "sys/leases/revoke-prefix/database/creds/*" {
  capabilities = ["update", "sudo"]
}
path "sys/leases/lookup/database/creds/*" {
  capabilities = ["list", "sudo"]
}

# The reaper's orphan scan: which roles exist under the mount (draftd then reads the draft_* ones,
# as allowed above, and keeps those on its own connection), and which roles Vault still holds leases
# of, deleted ones included (their leases are revoked too). Listing the lease directories needs sudo
# like the lookups above; the glob above matches database/creds/ itself already, and it is named
# here so the scan's need is plain. tests/it/orphans_credentials.rs runs the scan with this policy.
path "database/roles/" {
  capabilities = ["list"]
}
path "sys/leases/lookup/database/creds/" {
  capabilities = ["list", "sudo"]
}
