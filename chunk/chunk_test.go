package chunk_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand"
	"testing"

	"github.com/cairn-backup/cairn/chunk"
	"github.com/restic/chunker"
)

// Small sizes keep the tests fast while leaving room for many chunks.
const (
	minSize = 16 << 10
	maxSize = 256 << 10
	avgBits = 16 // 64 KiB
)

const pol = chunker.Pol(0x3DA3358B4DC173)

func random(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// split returns the chunks of data, copied out of the chunker's buffer.
func split(t *testing.T, c *chunk.Chunker, data []byte) [][]byte {
	t.Helper()
	c.Reset(bytes.NewReader(data))
	var chunks [][]byte
	buf := make([]byte, 0, maxSize)
	for {
		ch, err := c.Next(buf)
		if errors.Is(err, io.EOF) {
			return chunks
		}
		if err != nil {
			t.Fatal(err)
		}
		chunks = append(chunks, bytes.Clone(ch))
	}
}

func lengths(chunks [][]byte) []int {
	l := make([]int, len(chunks))
	for i, c := range chunks {
		l[i] = len(c)
	}
	return l
}

func TestPolynomialIsIrreducible(t *testing.T) {
	if !pol.Irreducible() {
		t.Fatal("test polynomial is reducible")
	}
}

func TestChunksCoverInput(t *testing.T) {
	c := chunk.New(pol, minSize, maxSize, avgBits)
	inputs := map[string][]byte{
		"empty":         {},
		"one byte":      {1},
		"below minimum": random(1, minSize-1),
		"at maximum":    random(2, maxSize),
		"random 8 MiB":  random(3, 8<<20),
		"zeros 2 MiB":   make([]byte, 2<<20),
		"text":          bytes.Repeat([]byte("all work and no play "), 100000),
	}
	for name, data := range inputs {
		chunks := split(t, c, data)
		if got := bytes.Join(chunks, nil); !bytes.Equal(got, data) {
			t.Fatalf("%s: chunks joined give %d bytes that differ from the %d input bytes", name, len(got), len(data))
		}
		if len(data) == 0 && len(chunks) != 0 {
			t.Fatalf("%s: %d chunks for no data", name, len(chunks))
		}
		for i, ch := range chunks {
			last := i == len(chunks)-1
			if len(ch) > maxSize || len(ch) == 0 || (!last && len(ch) < minSize) {
				t.Fatalf("%s: chunk %d of %d has %d bytes, bounds [%d, %d]", name, i, len(chunks), len(ch), minSize, maxSize)
			}
		}
		if name == "random 8 MiB" {
			// About 8 MiB / 64 KiB on average; a wide margin, the point is
			// that the average size setting is used at all.
			if n := len(chunks); n < 40 || n > 200 {
				t.Fatalf("%d chunks of random data, expected about %d", n, (8<<20)/(1<<avgBits))
			}
		}
	}
}

func TestBoundariesDeterministic(t *testing.T) {
	data := random(4, 4<<20)
	c := chunk.New(pol, minSize, maxSize, avgBits)
	first := lengths(split(t, c, data))
	// Same chunker after Reset, and a new one: the same boundaries.
	if again := lengths(split(t, c, data)); !equalInts(first, again) {
		t.Fatal("boundaries changed after Reset")
	}
	// Reset on another stream in between must not leak state.
	split(t, c, random(5, 1<<20))
	if again := lengths(split(t, c, data)); !equalInts(first, again) {
		t.Fatal("boundaries depend on the previous stream")
	}
	if again := lengths(split(t, chunk.New(pol, minSize, maxSize, avgBits), data)); !equalInts(first, again) {
		t.Fatal("a second chunker with the same polynomial cuts elsewhere")
	}
	// The polynomial is what keeps boundaries private to a repository.
	other, err := chunker.RandomPolynomial()
	if err != nil {
		t.Fatal(err)
	}
	if again := lengths(split(t, chunk.New(other, minSize, maxSize, avgBits), data)); equalInts(first, again) {
		t.Fatal("another polynomial gives the same boundaries")
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestInsertionKeepsChunks: one byte inserted early changes only the chunks
// around it, so an edited file still deduplicates.
func TestInsertionKeepsChunks(t *testing.T) {
	data := random(6, 8<<20)
	c := chunk.New(pol, minSize, maxSize, avgBits)
	set := func(chunks [][]byte) map[[32]byte]bool {
		m := map[[32]byte]bool{}
		for _, ch := range chunks {
			m[sha256.Sum256(ch)] = true
		}
		return m
	}
	orig := split(t, c, data)
	before := set(orig)
	for _, at := range []int{0, 1000, 3 << 20, len(data) - 1} {
		edited := append(append(append([]byte(nil), data[:at]...), 0x42), data[at:]...)
		after := split(t, c, edited)
		shared := 0
		for h := range set(after) {
			if before[h] {
				shared++
			}
		}
		// A boundary or two around the edit move; everything else stays.
		if shared < len(orig)-3 {
			t.Errorf("insert at %d: %d of %d chunks kept", at, shared, len(orig))
		}
	}
}
