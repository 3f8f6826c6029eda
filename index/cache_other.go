//go:build !linux

package index

// dropMapped is a no-op where pages cannot be dropped from the mapping.
func (c *cache) dropMapped() {}
