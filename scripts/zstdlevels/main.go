// Command zstdlevels compares the zstd encoders cairn could use on real
// data: it cuts every file under a directory into chunks as a backup does,
// compresses each chunk with each encoder and level (keeping a chunk raw
// when compression saves less than 1/32, as cairn does) and prints the CPU
// time of one thread and the bytes stored. Usage: go run ./scripts/zstdlevels DIR
package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"time"

	ddzstd "github.com/DataDog/zstd"
	"github.com/klauspost/compress/zstd"
	"github.com/restic/chunker"
	"golang.org/x/sys/unix"

	"github.com/cairn-backup/cairn/chunk"
	"github.com/cairn-backup/cairn/repo"
)

type encoder struct {
	name string
	enc  func(dst, src []byte) []byte
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: zstdlevels DIR")
		os.Exit(2)
	}
	chunks, total, err := load(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "zstdlevels:", err)
		os.Exit(1)
	}
	fmt.Printf("%d chunks, %.1f MiB\n\n", len(chunks), float64(total)/(1<<20))

	goEnc := func(level zstd.EncoderLevel) func(dst, src []byte) []byte {
		e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true),
			zstd.WithEncoderCRC(false), zstd.WithEncoderLevel(level))
		if err != nil {
			panic(err)
		}
		return func(dst, src []byte) []byte { return e.EncodeAll(src, dst[:0]) }
	}
	ctx := ddzstd.NewCtx()
	cEnc := func(level int) func(dst, src []byte) []byte {
		return func(dst, src []byte) []byte {
			out, err := ctx.CompressLevel(dst[:cap(dst)], src, level)
			if err != nil {
				panic(err)
			}
			return out
		}
	}
	cParams := func(level, minMatch int) func(dst, src []byte) []byte {
		enc, err := repo.ZstdEncoder(level, minMatch)
		if err != nil {
			panic(err)
		}
		return func(dst, src []byte) []byte {
			out, ok := enc(dst[:0], src)
			if !ok {
				panic("zstd: compress")
			}
			return out
		}
	}
	encoders := []encoder{
		{"Go, fastest", goEnc(zstd.SpeedFastest)},
		{"Go, default", goEnc(zstd.SpeedDefault)},
		{"C (cgo), level 1", cEnc(1)},
		{"C (cgo), level 2", cEnc(2)},
		{"C (cgo), level 3", cEnc(3)},
		{"C (cgo), level 3, min match 6", cParams(3, 6)},
		// What a backup stores: with cgo, level 3 with a minimum match of
		// 6; the incompressibility probes included.
		{"cairn auto (this build)", func(dst, src []byte) []byte { return repo.Encode(dst[:0], src, repo.CompressAuto) }},
	}
	// CPU time of this thread only: the figures hold on a busy machine.
	runtime.LockOSThread()
	fmt.Println("| encoder | CPU s (median of 3) | stored MiB |")
	fmt.Println("|---|---|---|")
	buf := make([]byte, 0, 2*chunker.MaxSize)
	for _, e := range encoders {
		var times []time.Duration
		stored := 0
		for range 3 {
			stored = 0
			start := threadCPU()
			for _, c := range chunks {
				buf = e.enc(buf, c)
				stored += min(len(buf), len(c)-len(c)/32)
			}
			times = append(times, threadCPU()-start)
		}
		fmt.Printf("| %s | %.2f | %.1f |\n", e.name, median(times).Seconds(), float64(stored)/(1<<20))
	}
}

// load reads every regular file under dir and cuts it with the chunk sizes
// of a new repository.
func load(dir string) (chunks [][]byte, total int, err error) {
	pol, err := chunker.RandomPolynomial()
	if err != nil {
		return nil, 0, err
	}
	ch := chunk.New(pol, repo.DefaultChunkMin, repo.DefaultChunkMax, repo.DefaultChunkAvgBits)
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		ch.Reset(f)
		for {
			c, err := ch.Next(nil)
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			chunks = append(chunks, c)
			total += len(c)
		}
	})
	return chunks, total, err
}

func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		panic(err)
	}
	return time.Duration(ts.Nano())
}

func median(d []time.Duration) time.Duration {
	for i := range d {
		for j := i + 1; j < len(d); j++ {
			if d[j] < d[i] {
				d[i], d[j] = d[j], d[i]
			}
		}
	}
	return d[len(d)/2]
}
