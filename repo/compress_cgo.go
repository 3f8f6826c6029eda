//go:build cgo

package repo

import (
	"fmt"
	"runtime"
	"slices"

	"github.com/DataDog/zstd"
)

// With cgo, auto compression is the reference zstd library at its default
// level 3: on the benchmark's files it stores slightly less than the pure-Go
// encoder's default level for about 60% of its CPU (docs/benchmarks.md), and
// compression is most of a first backup's CPU. The frames are plain zstd,
// read by either build.
const autoLevel = 3

// cctxs holds one (de)compression context per core, made on first use and
// reused (setting up a context's tables costs more than compressing a small
// file). Taking one also caps compressions at one per core, which is all
// the CPU there is, and bounds the library's memory (about 2 MiB each, outside
// the Go heap).
var cctxs = func() chan zstd.Ctx {
	c := make(chan zstd.Ctx, runtime.GOMAXPROCS(0))
	for range cap(c) {
		c <- nil
	}
	return c
}()

// takeCtx waits for a free context; the caller puts it back in cctxs.
func takeCtx() zstd.Ctx {
	if c := <-cctxs; c != nil {
		return c
	}
	return zstd.NewCtx()
}

// compressAuto appends the zstd frame of src to dst; false if the library
// failed (the caller stores src raw).
func compressAuto(dst, src []byte) ([]byte, bool) {
	c := takeCtx()
	defer func() { cctxs <- c }()
	dst = slices.Grow(dst, zstd.CompressBound(len(src)))
	out, err := c.CompressLevel(dst[len(dst):cap(dst)], src, autoLevel)
	if err != nil {
		return dst, false
	}
	return dst[:len(dst)+len(out)], true
}

// decompressSized decodes a frame that states its content size straight into
// dst grown by that size: the reference library needs no history buffers
// then, which the Go decoder keeps on the heap. ok is false for a frame
// without a stated size (the caller decodes it in Go).
func decompressSized(dst, src []byte, maxSize int) (out []byte, ok bool, err error) {
	n, ok := frameContentSize(src)
	if !ok {
		return nil, false, nil
	}
	if n > uint64(maxSize) {
		return nil, true, fmt.Errorf("decoded object exceeds %d bytes", maxSize)
	}
	if n == 0 {
		return nil, false, nil
	}
	c := takeCtx()
	defer func() { cctxs <- c }()
	dst = slices.Grow(dst, int(n))
	got, err := c.DecompressInto(dst[len(dst):len(dst)+int(n)], src)
	if err != nil {
		return nil, true, fmt.Errorf("zstd: %w", err)
	}
	if got != int(n) {
		return nil, true, fmt.Errorf("zstd: frame holds %d bytes, its header says %d", got, n)
	}
	return dst[:len(dst)+got], true, nil
}
