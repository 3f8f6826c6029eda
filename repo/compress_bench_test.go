package repo_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/cairn-backup/cairn/repo"
)

// benchInputs are 8 MiB of real files from the machine when it has Go's
// sources (falling back to text-like lines), and 8 MiB of random bytes.
func benchInputs(b *testing.B) map[string][]byte {
	const size = 8 << 20
	real := make([]byte, 0, size)
	_ = filepath.WalkDir("/usr/local/go/src", func(p string, d os.DirEntry, err error) error {
		if err != nil || len(real) >= size || !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err == nil {
			real = append(real, data[:min(len(data), size-len(real))]...)
		}
		return nil
	})
	rng := rand.New(rand.NewPCG(1, 2))
	for len(real) < size {
		real = fmt.Appendf(real, "%08d key=%d value=%x status=ok\n", rng.IntN(1e8), rng.IntN(1000), rng.Uint32())
	}
	random := make([]byte, size)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(random)
	return map[string][]byte{"files": real[:size], "random": random}
}

// BenchmarkEncode measures zstd per 1 MiB blob at the two levels cairn
// offers (auto: zstd level 3, max: a slower, better level) and reports the
// ratio.
func BenchmarkEncode(b *testing.B) {
	for name, data := range benchInputs(b) {
		for _, mode := range []repo.Compression{repo.CompressAuto, repo.CompressMax} {
			b.Run(fmt.Sprintf("%s/%s", name, mode), func(b *testing.B) {
				var dst []byte
				var in, out int64
				b.SetBytes(1 << 20)
				i := 0
				for b.Loop() {
					blob := data[(i%8)<<20 : (i%8+1)<<20]
					dst = repo.Encode(dst[:0], blob, mode)
					in += int64(len(blob))
					out += int64(len(dst))
					i++
				}
				b.ReportMetric(float64(in)/float64(out), "ratio")
			})
		}
	}
}
