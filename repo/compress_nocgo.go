//go:build !cgo

package repo

import (
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Without cgo (static builds), auto compression is the pure-Go encoder at its
// default level: the same format, about 1.6x the CPU of the reference library
// for a repository 0.2% larger (docs/benchmarks.md).
var (
	encAuto     *zstd.Encoder
	encAutoOnce sync.Once
)

// compressAuto appends the zstd frame of src to dst.
func compressAuto(dst, src []byte) ([]byte, bool) {
	encAutoOnce.Do(func() {
		encAuto, _ = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithLowerEncoderMem(true),
			zstd.WithEncoderCRC(false), zstd.WithEncoderLevel(zstd.SpeedDefault))
	})
	return encAuto.EncodeAll(src, dst), true
}

// decompressSized leaves every frame to the Go decoder.
func decompressSized(dst, src []byte, maxSize int) ([]byte, bool, error) {
	return nil, false, nil
}
