package mem_test

import (
	"testing"

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
	"github.com/cairn-backup/cairn/repo/repotest"
)

func TestBackend(t *testing.T) {
	repotest.Run(t, func(t *testing.T) repo.Backend {
		be := mem.New()
		t.Cleanup(func() { be.Close() })
		return be
	})
}
