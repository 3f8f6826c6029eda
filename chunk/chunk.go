// Package chunk cuts a stream into content-defined chunks with a rolling
// Rabin fingerprint (github.com/restic/chunker), so an insertion moves only
// the chunk boundaries near it.
package chunk

import (
	"io"

	"github.com/restic/chunker"
)

// Chunker splits one stream at a time; Reset moves it to the next stream
// while keeping the polynomial's tables, which are costly to build.
type Chunker struct {
	c        *chunker.Chunker
	pol      chunker.Pol
	min, max uint
	avgBits  int
}

// New returns a Chunker for polynomial pol with chunk sizes between min and
// max bytes and about 2^avgBits on average.
func New(pol chunker.Pol, min, max uint, avgBits int) *Chunker {
	c := chunker.NewWithBoundaries(nil, pol, min, max)
	c.SetAverageBits(avgBits)
	return &Chunker{c: c, pol: pol, min: min, max: max, avgBits: avgBits}
}

// Reset starts chunking r.
func (c *Chunker) Reset(r io.Reader) {
	c.c.ResetWithBoundaries(r, c.pol, c.min, c.max) // tables are cached per polynomial
	c.c.SetAverageBits(c.avgBits)
}

// Next appends the next chunk to buf[:0] and returns it; io.EOF after the last.
func (c *Chunker) Next(buf []byte) ([]byte, error) {
	ch, err := c.c.Next(buf[:0])
	if err != nil {
		return nil, err
	}
	return ch.Data, nil
}
