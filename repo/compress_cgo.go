//go:build cgo

package repo

// The library's C sources come with github.com/DataDog/zstd, whose Go API
// has no way to set a compression parameter: the few functions needed for
// that are declared here (zstd.h, stable API) and resolve to its copy.

/*
#include <stddef.h>
#include <stdlib.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

// The library's contexts resize their workspaces as input sizes vary, from
// whichever thread runs them; glibc gives each thread an arena of its own
// and keeps what is freed in it, which added ~10 MB to a backup's resident
// size. The library is the only C code here: one arena serves it, set before
// the Go runtime starts its threads (a constructor runs at load time).
__attribute__((constructor)) static void oneMallocArena(void) {
#if defined(__GLIBC__) && defined(M_ARENA_MAX)
	mallopt(M_ARENA_MAX, 1);
#endif
}

typedef struct ZSTD_CCtx_s ZSTD_CCtx;
ZSTD_CCtx* ZSTD_createCCtx(void);
size_t ZSTD_freeCCtx(ZSTD_CCtx* cctx);
size_t ZSTD_CCtx_setParameter(ZSTD_CCtx* cctx, int param, int value);
size_t ZSTD_compress2(ZSTD_CCtx* cctx, void* dst, size_t dstCapacity, const void* src, size_t srcSize);
unsigned ZSTD_isError(size_t code);
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"unsafe"

	"github.com/DataDog/zstd"
)

// With cgo, auto compression is the reference zstd library at its default
// level 3 with matches of at least 6 bytes rather than 5: on the benchmark's
// tree that stores less than level 3 itself at about its CPU, and less
// than the pure-Go encoder's default for about 60% of its CPU
// (docs/benchmarks.md); compression is most of a first backup's CPU. The
// frames are plain zstd, read by either build.
const (
	autoLevel    = 3
	autoMinMatch = 6

	cLevel    = 100 // ZSTD_c_compressionLevel
	cMinMatch = 105 // ZSTD_c_minMatch
)

// Contexts, one per core (GOMAXPROCS as the program starts), are made on
// first use and reused (setting up a context's tables costs more than
// compressing a small file). Taking one also caps (de)compressions at one
// per core, which is all the CPU there is, and bounds the library's memory
// (a few MiB each, outside the Go heap).
var (
	cctxs = newPool[*C.ZSTD_CCtx]() // compression, parameters set
	dctxs = newPool[zstd.Ctx]()     // decompression
)

func newPool[T any]() chan T {
	c := make(chan T, runtime.GOMAXPROCS(0))
	var zero T
	for range cap(c) {
		c <- zero
	}
	return c
}

// newCCtx makes a compression context at level that looks for matches of
// at least minMatch bytes (0: the level's own).
func newCCtx(level, minMatch int) (*C.ZSTD_CCtx, error) {
	c := C.ZSTD_createCCtx()
	if c == nil {
		return nil, errors.New("zstd: out of memory")
	}
	for _, p := range [][2]C.int{{cLevel, C.int(level)}, {cMinMatch, C.int(minMatch)}} {
		if r := C.ZSTD_CCtx_setParameter(c, p[0], p[1]); C.ZSTD_isError(r) != 0 {
			C.ZSTD_freeCCtx(c)
			return nil, fmt.Errorf("zstd: parameter %d: error %d", p[0], r)
		}
	}
	return c, nil
}

// takeCCtx waits for a free compression context; the caller puts it back.
func takeCCtx() (*C.ZSTD_CCtx, error) {
	if c := <-cctxs; c != nil {
		return c, nil
	}
	c, err := newCCtx(autoLevel, autoMinMatch)
	if err != nil {
		cctxs <- nil
	}
	return c, err
}

// compressAuto appends the zstd frame of src to dst; false if the library
// failed (the caller stores src raw).
func compressAuto(dst, src []byte) ([]byte, bool) {
	if len(src) == 0 {
		return dst, false
	}
	c, err := takeCCtx()
	if err != nil {
		return dst, false
	}
	defer func() { cctxs <- c }()
	return compress2(c, dst, src)
}

// compress2 appends the frame of src made with c to dst; false if the
// library failed.
func compress2(c *C.ZSTD_CCtx, dst, src []byte) ([]byte, bool) {
	dst = slices.Grow(dst, zstd.CompressBound(len(src)))
	free := dst[len(dst):cap(dst)]
	n := C.ZSTD_compress2(c, unsafe.Pointer(unsafe.SliceData(free)), C.size_t(len(free)),
		unsafe.Pointer(unsafe.SliceData(src)), C.size_t(len(src)))
	if C.ZSTD_isError(n) != 0 {
		return dst, false
	}
	return dst[:len(dst)+int(n)], true
}

// ZstdEncoder compresses with libzstd at level, looking for matches of at
// least minMatch bytes (0: the level's own), for comparing settings
// (scripts/zstdlevels). The function appends to dst and is not safe for
// concurrent use.
func ZstdEncoder(level, minMatch int) (func(dst, src []byte) ([]byte, bool), error) {
	c, err := newCCtx(level, minMatch)
	if err != nil {
		return nil, err
	}
	return func(dst, src []byte) ([]byte, bool) { return compress2(c, dst, src) }, nil
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
	c := <-dctxs
	if c == nil {
		c = zstd.NewCtx()
	}
	defer func() { dctxs <- c }()
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
