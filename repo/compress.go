package repo

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Compression selects how blobs are stored (docs/format.md).
type Compression string

const (
	CompressAuto Compression = "auto"
	CompressOff  Compression = "off"
	CompressMax  Compression = "max"
)

// ParseCompression checks a --compression value.
func ParseCompression(s string) (Compression, error) {
	switch c := Compression(s); c {
	case CompressAuto, CompressOff, CompressMax:
		return c, nil
	}
	return "", fmt.Errorf("invalid compression %q: want auto, off or max", s)
}

// Encoding bytes: the first byte of every sealed plaintext.
const (
	encRaw  = 0
	encZstd = 1
)

var (
	encAuto, encBest *zstd.Encoder
	decoder          *zstd.Decoder
	zstdOnce         sync.Once
)

func zstdInit() {
	zstdOnce.Do(func() {
		// EncodeAll runs at most "concurrency" calls at once: one per core,
		// so every worker compresses in parallel.
		n := runtime.GOMAXPROCS(0)
		// auto is zstd's default level: on real files it stores about 4%
		// less than the fastest level (what restic's auto stores too) for
		// about 1.4x the CPU (docs/benchmarks.md). No frame checksums: the
		// AEAD tag and the blob ID already vouch for every byte.
		opts := []zstd.EOption{zstd.WithEncoderConcurrency(n), zstd.WithLowerEncoderMem(true), zstd.WithEncoderCRC(false)}
		encAuto, _ = zstd.NewWriter(nil, append(opts[:len(opts):len(opts)], zstd.WithEncoderLevel(zstd.SpeedDefault))...)
		encBest, _ = zstd.NewWriter(nil, append(opts[:len(opts):len(opts)], zstd.WithEncoderLevel(zstd.SpeedBetterCompression))...)
		decoder, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxMemory(256<<20))
	})
}

// Encode appends the encoding byte and data (compressed when mode says so and
// it pays) to dst.
func Encode(dst, data []byte, mode Compression) []byte {
	if mode == CompressOff || len(data) < 64 {
		dst = append(dst, encRaw)
		return append(dst, data...)
	}
	zstdInit()
	enc := encAuto
	if mode == CompressMax {
		enc = encBest
	}
	if mode == CompressAuto && len(data) >= 4*sampleSize && !worthCompressing(data) {
		dst = append(dst, encRaw)
		return append(dst, data...)
	}
	off := len(dst)
	dst = append(dst, encZstd)
	dst = enc.EncodeAll(data, dst)
	// auto: keep it compressed only if that saves at least 1/32.
	if mode == CompressAuto && len(dst)-off-1 > len(data)-len(data)/32 {
		dst = append(dst[:off], encRaw)
		dst = append(dst, data...)
	}
	return dst
}

// sampleSize is the size of each probe of worthCompressing.
const sampleSize = 16 << 10

var samplePool = sync.Pool{New: func() any { b := make([]byte, 0, 2*sampleSize); return &b }}

// worthCompressing probes data at its start, middle and end: compressed
// media, archives and encrypted files are the bulk of many backups, and
// compressing a whole blob to learn that costs far more than three probes.
func worthCompressing(data []byte) bool {
	bp := samplePool.Get().(*[]byte)
	defer samplePool.Put(bp)
	in, out := 0, 0
	for _, off := range []int{0, len(data)/2 - sampleSize/2, len(data) - sampleSize} {
		probe := data[off : off+sampleSize]
		*bp = encAuto.EncodeAll(probe, (*bp)[:0])
		in += len(probe)
		out += len(*bp)
	}
	return out <= in-in/32
}

// Decode undoes Encode, appending the plaintext to dst. maxSize bounds the
// decompressed length (0: 1 GiB) so damaged input cannot exhaust memory.
func Decode(dst, enc []byte, maxSize int) ([]byte, error) {
	if len(enc) == 0 {
		return nil, errors.New("empty encoded object")
	}
	switch enc[0] {
	case encRaw:
		return append(dst, enc[1:]...), nil
	case encZstd:
		zstdInit()
		if maxSize == 0 {
			maxSize = 1 << 30
		}
		out, err := decoder.DecodeAll(enc[1:], dst)
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		if len(out)-len(dst) > maxSize {
			return nil, fmt.Errorf("decoded object exceeds %d bytes", maxSize)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown encoding byte %d", enc[0])
}
