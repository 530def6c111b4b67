// Package hybrid holds what the binary embeds from the repository root.
package hybrid

import _ "embed"

// DefaultConfig is the repository's hybrid.yaml: the demo configuration used
// when no --config is given and no ./hybrid.yaml exists.
//
//go:embed hybrid.yaml
var DefaultConfig []byte
