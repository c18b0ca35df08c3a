// Package migrations holds the database schema as golang-migrate files,
// embedded so that the binary can migrate without the source tree.
package migrations

import "embed"

// FS holds every NNNNNN_name.up.sql and .down.sql file of this directory.
//
//go:embed *.sql
var FS embed.FS
