package repo

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
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
	encBest  *zstd.Encoder
	decoder  *zstd.Decoder
	zstdOnce sync.Once
)

func zstdInit() {
	zstdOnce.Do(func() {
		// EncodeAll and DecodeAll run at most "concurrency" calls at once:
		// one per core, so every worker works in parallel. No frame
		// checksums: the AEAD tag and the blob ID already vouch for every
		// byte.
		encBest, _ = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithLowerEncoderMem(true),
			zstd.WithEncoderCRC(false), zstd.WithEncoderLevel(zstd.SpeedBetterCompression))
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
	off := len(dst)
	dst = append(dst, encZstd)
	if mode == CompressMax {
		zstdInit()
		return encBest.EncodeAll(data, dst)
	}
	if small := len(data) < 4*sampleSize; small && compressedFormat(data) || !small && !worthCompressing(data) {
		return append(append(dst[:off], encRaw), data...)
	}
	dst, ok := compressAuto(dst, data)
	if !ok || !savesEnough(len(data), len(dst)-off-1) {
		return append(append(dst[:off], encRaw), data...)
	}
	return dst
}

// savesEnough reports whether n bytes compressed to stored are worth
// keeping compressed in auto: a saving of at least 1/32.
func savesEnough(n, stored int) bool {
	return stored <= n-n/32
}

// sampleSize is the size of each probe of worthCompressing.
const sampleSize = 16 << 10

var samplePool = sync.Pool{New: func() any { b := make([]byte, 0, 2*sampleSize); return &b }}

// worthCompressing probes data at its start, middle and end: compressed
// media, archives and encrypted files are the bulk of many backups, and
// compressing a whole blob to learn that costs far more than three probes.
// The first probe that compresses decides: a probe whose byte values are
// spread unevenly compresses for sure and is not even compressed to find
// out. Data of which only a part compresses is then compressed whole, and
// Encode still stores it raw when that saves too little.
func worthCompressing(data []byte) bool {
	offs := [3]int{0, len(data)/2 - sampleSize/2, len(data) - sampleSize}
	for _, off := range offs {
		if skewedBytes(data[off : off+sampleSize]) {
			return true
		}
	}
	bp := samplePool.Get().(*[]byte)
	defer samplePool.Put(bp)
	for _, off := range offs {
		probe := data[off : off+sampleSize]
		var ok bool
		if *bp, ok = compressAuto((*bp)[:0], probe); !ok {
			return false
		}
		if savesEnough(len(probe), len(*bp)) {
			return true
		}
	}
	return false
}

// signatures open files of formats that are compressed already.
var signatures = [][]byte{
	{0x1f, 0x8b, 8}, // gzip (deflate)
	{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'},
	{0xff, 0xd8, 0xff},                 // JPEG
	{0xfd, '7', 'z', 'X', 'Z', 0},      // xz
	{0x28, 0xb5, 0x2f, 0xfd},           // zstd
	{'7', 'z', 0xbc, 0xaf, 0x27, 0x1c}, // 7-Zip
}

// compressedFormat reports whether data opens with the signature of a
// compressed format. A blob too small to probe is compressed whole to learn
// whether that pays, and many small files are compressed already (man
// pages, icons): in the benchmark's tree 27,886 files under 64 KiB open with
// one of these signatures, 279 of which would have shrunk by 1/32 (79 kB in
// all), and compressing them all took ~0.4 of a first backup's ~15 CPU-s.
func compressedFormat(data []byte) bool {
	for _, sig := range signatures {
		if bytes.HasPrefix(data, sig) {
			return true
		}
	}
	return false
}

// skewedBytes reports whether b's order-0 entropy is under 7 bits per byte:
// entropy coding alone then saves more than 1/8, whatever the matches.
func skewedBytes(b []byte) bool {
	var counts [4][256]uint32 // four tables: consecutive bytes rarely share a counter
	i := 0
	for ; i+4 <= len(b); i += 4 {
		counts[0][b[i]]++
		counts[1][b[i+1]]++
		counts[2][b[i+2]]++
		counts[3][b[i+3]]++
	}
	for ; i < len(b); i++ {
		counts[0][b[i]]++
	}
	n := float64(len(b))
	bits := 0.0
	for v := range 256 {
		if c := counts[0][v] + counts[1][v] + counts[2][v] + counts[3][v]; c > 0 {
			p := float64(c) / n
			bits -= p * math.Log2(p)
		}
	}
	return bits < 7
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
		if maxSize == 0 {
			maxSize = 1 << 30
		}
		if out, ok, err := decompressSized(dst, enc[1:], maxSize); ok {
			return out, err
		}
		zstdInit()
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

// frameContentSize reads the content size a zstd frame header states
// (RFC 8878, 3.1.1.1); false if src is no frame or the header omits it.
func frameContentSize(src []byte) (uint64, bool) {
	if len(src) < 5 || binary.LittleEndian.Uint32(src) != 0xFD2FB528 {
		return 0, false
	}
	fhd := src[4]
	single := fhd&0x20 != 0
	pos := 5
	if !single {
		pos++ // window descriptor
	}
	pos += [4]int{0, 1, 2, 4}[fhd&3] // dictionary ID
	size := [4]int{0, 2, 4, 8}[fhd>>6]
	if size == 0 && single {
		size = 1
	}
	if size == 0 || len(src) < pos+size {
		return 0, false
	}
	b := src[pos : pos+size]
	switch size {
	case 1:
		return uint64(b[0]), true
	case 2:
		return uint64(binary.LittleEndian.Uint16(b)) + 256, true
	case 4:
		return uint64(binary.LittleEndian.Uint32(b)), true
	}
	return binary.LittleEndian.Uint64(b), true
}
