//go:build tools

// Package tools pins the etcd server built by testbed/build-binaries.sh.
package tools

import _ "go.etcd.io/etcd/server/v3"
