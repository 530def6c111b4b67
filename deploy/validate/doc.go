// Package validate holds no code of its own: its tests check the manifests
// under deploy/ without a cluster.
package validate
