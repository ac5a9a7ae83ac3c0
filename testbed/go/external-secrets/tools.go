//go:build tools

// Package tools pins the External Secrets Operator controller built for the testbed.
package tools

import _ "github.com/external-secrets/external-secrets"
