package chunk_test

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/cairn-backup/cairn/chunk"
	"github.com/restic/chunker"
)

// BenchmarkChunker measures content-defined chunking with the repository's
// default sizes (512 KiB min, 2^17 split: 640 KiB average, 8 MiB max) on
// random data.
func BenchmarkChunker(b *testing.B) {
	data := make([]byte, 64<<20)
	_, _ = rand.NewChaCha8([32]byte{2}).Read(data)
	pol, err := chunker.RandomPolynomial()
	if err != nil {
		b.Fatal(err)
	}
	c := chunk.New(pol, 512<<10, 8<<20, 17)
	buf := make([]byte, 0, 8<<20)
	b.SetBytes(int64(len(data)))
	n := 0
	for b.Loop() {
		c.Reset(bytes.NewReader(data))
		for {
			var err error
			if buf, err = c.Next(buf[:0]); err != nil {
				break
			}
			n++
		}
	}
	b.ReportMetric(float64(len(data))/float64(n)*float64(b.N)/(1<<20), "MiB/chunk")
}
