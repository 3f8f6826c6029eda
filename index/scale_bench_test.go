package index_test

import (
	"context"
	"encoding/binary"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/local"
)

// scaleBlobs is the index size of BenchmarkIndexScale; CAIRN_BENCH_INDEX_BLOBS
// overrides it for quicker runs.
func scaleBlobs(b *testing.B) int {
	if s := os.Getenv("CAIRN_BENCH_INDEX_BLOBS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			b.Fatalf("CAIRN_BENCH_INDEX_BLOBS=%q: want a positive count", s)
		}
		return n
	}
	return 10_000_000
}

// blobID derives a distinct, uniformly spread ID from i, as a keyed hash would.
func blobID(i uint64) repo.ID {
	var in [8]byte
	binary.LittleEndian.PutUint64(in[:], i)
	return repo.ID(crypto.Hash(in[:]))
}

// heapPeak samples the live heap (as of the last collection, so garbage
// awaiting collection does not count) until stop is closed and returns the
// peak.
func heapPeak(stop <-chan struct{}) <-chan uint64 {
	out := make(chan uint64, 1)
	go func() {
		var peak uint64
		sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			peak = max(peak, sample[0].Value.Uint64())
			select {
			case <-stop:
				out <- peak
				return
			case <-t.C:
			}
		}
	}()
	return out
}

// scaleRepo is the index BenchmarkIndexScale looks up in, built once per
// process: the benchmark function runs more than once.
var scaleRepo struct {
	once      sync.Once
	dir       string
	r         *repo.Repo
	n         int
	buildSecs float64
	buildPeak uint64
	err       error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if scaleRepo.dir != "" {
		os.RemoveAll(scaleRepo.dir)
	}
	os.Exit(code)
}

// buildScaleRepo adds n blobs the way backups do: packs added, index files
// flushed into the repository and the bbolt cache.
func buildScaleRepo(n int) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "cairn-index-bench-")
	if err != nil {
		return err
	}
	scaleRepo.dir, scaleRepo.n = dir, n
	be, err := local.Open(dir + "/repo")
	if err == nil {
		err = be.Create()
	}
	if err != nil {
		return err
	}
	r, err := repo.Init(ctx, be, []byte("pw"), repo.InitOptions{KDF: crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		return err
	}
	scaleRepo.r = r
	runtime.GC()
	stop := make(chan struct{})
	peak := heapPeak(stop)
	start := time.Now()
	idx, err := index.Load(ctx, r, index.Options{CacheDir: dir + "/cache"})
	if err != nil {
		return err
	}
	defer idx.Close()
	const perPack = 16 // ~1 MiB blobs in 16 MiB packs
	var next uint64
	for next < uint64(n) {
		pack := blobID(1<<63 | next)
		blobs := make([]repo.PackedBlob, 0, perPack)
		for j := 0; j < perPack && next < uint64(n); j++ {
			blobs = append(blobs, repo.PackedBlob{ID: blobID(next), Offset: uint32(j << 20), Length: 1 << 20, RawLength: 1 << 20})
			next++
		}
		idx.Add(pack, blobs)
		if idx.Unsaved() >= index.FlushEvery {
			if err := idx.Flush(ctx, r); err != nil {
				return err
			}
		}
	}
	if err := idx.Flush(ctx, r); err != nil {
		return err
	}
	close(stop)
	scaleRepo.buildSecs = time.Since(start).Seconds()
	scaleRepo.buildPeak = <-peak
	return nil
}

// BenchmarkIndexScale looks up present and absent blobs in an index of ten
// million blobs, reopened from the cache as the next backup would. It reports
// lookups/s and the peak live heap of building the index and of looking up.
func BenchmarkIndexScale(b *testing.B) {
	scaleRepo.once.Do(func() { scaleRepo.err = buildScaleRepo(scaleBlobs(b)) })
	if scaleRepo.err != nil {
		b.Fatal(scaleRepo.err)
	}
	ctx := context.Background()
	n := scaleRepo.n
	runtime.GC()
	stop := make(chan struct{})
	peak := heapPeak(stop)
	start := time.Now()
	idx, err := index.Load(ctx, scaleRepo.r, index.Options{CacheDir: scaleRepo.dir + "/cache"})
	if err != nil {
		b.Fatal(err)
	}
	defer idx.Close()
	reopen := time.Since(start).Seconds()

	var wrong atomic.Uint64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := uint64(0)
		for pb.Next() {
			i++
			// Alternate present and absent blobs: a backup asks about both.
			q := (i * 2654435761) % uint64(n)
			if i%2 == 1 {
				q += uint64(n)
			}
			if _, ok := idx.Lookup(repo.DataBlob, blobID(q)); ok != (q < uint64(n)) {
				wrong.Add(1)
			}
		}
	})
	b.StopTimer()
	close(stop)
	if w := wrong.Load(); w != 0 {
		b.Fatalf("%d lookups gave the wrong answer", w)
	}
	b.ReportMetric(float64(n), "blobs")
	b.ReportMetric(scaleRepo.buildSecs, "build-s")
	b.ReportMetric(float64(scaleRepo.buildPeak)/(1<<20), "build-peak-live-heap-MiB")
	b.ReportMetric(reopen, "reopen-s")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
	b.ReportMetric(float64(<-peak)/(1<<20), "lookup-peak-live-heap-MiB")
}
