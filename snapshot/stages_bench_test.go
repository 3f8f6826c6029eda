package snapshot_test

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/chunk"
	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
	"golang.org/x/sys/unix"
)

// stagesCap bounds the content BenchmarkStages holds in memory per set.
const stagesCap = 300 << 20

// stagesDataset is the tree scripts/bench.sh generates for night 1, used
// next to the Go sources when present. bench.sh renames it to
// $BENCH_DIR/tree while it backs it up: it is then left out.
const stagesDataset = "/tmp/cairn-bench/data/night1"

// stageBlob is one chunk of a set, as the backup sees it.
type stageBlob struct {
	data []byte // slice of its file's content
	id   [32]byte
	enc  []byte // repo.Encode output; nil for a chunk seen before (deduplicated)
}

// stageSet is content held in memory, pre-chunked and pre-encoded, so that
// each stage can be timed on its own input.
type stageSet struct {
	files  [][]byte
	blobs  []stageBlob
	bytes  int64 // content bytes
	unique int64 // content bytes of the chunks stored (first occurrence of each ID)
	enc    int64 // encoded bytes of those chunks
}

type stageEnv struct {
	cfg  repo.Config
	key  *crypto.Key
	sets map[string]*stageSet // "files", "dump"
	desc string
}

var (
	stagesOnce sync.Once
	stages     *stageEnv
	stagesErr  error
)

// BenchmarkStages times each per-chunk stage of a backup on its own, one
// core, on real content held in memory (no file reads, no pack writes):
// content-defined chunking, the keyed BLAKE3 blob ID, zstd "auto" and
// XChaCha20-Poly1305 sealing; then the chain of all four with 1 and 2
// workers. It reads CAIRN_BENCH_TREE (default: /usr/local/go/src plus the
// night-1 tree of scripts/bench.sh when present), at most 300 MiB chosen
// evenly over the file sizes; the largest *.sql file found, or
// CAIRN_BENCH_DUMP, is timed apart as "dump".
//
// Every MB/s counts the content bytes a stage accounts for, so that the
// stages' costs add up: compress and seal only run on chunks not seen
// before, as in a first backup, but count all of the set's bytes. MB/cpu-s
// is the same over the process's CPU time, which other jobs on the machine
// disturb less than wall time.
func BenchmarkStages(b *testing.B) {
	stagesOnce.Do(func() { stages, stagesErr = loadStages() })
	if stagesErr != nil {
		b.Fatal(stagesErr)
	}
	env := stages
	b.Logf("%s", env.desc)
	for _, name := range []string{"files", "dump"} {
		set := env.sets[name]
		if set == nil {
			continue
		}
		b.Run(name, func(b *testing.B) {
			b.Run("chunk", func(b *testing.B) {
				ch := chunk.New(env.cfg.Polynomial, env.cfg.ChunkMin, env.cfg.ChunkMax, env.cfg.ChunkAvgBits)
				buf := make([]byte, 0, env.cfg.ChunkMax)
				measure(b, set.bytes, func() {
					for _, f := range set.files {
						ch.Reset(bytes.NewReader(f))
						for {
							var err error
							if buf, err = ch.Next(buf[:0]); err != nil {
								break
							}
						}
					}
				})
			})
			b.Run("hash", func(b *testing.B) {
				measure(b, set.bytes, func() {
					for i := range set.blobs {
						_ = env.key.BlobID(set.blobs[i].data)
					}
				})
			})
			b.Run("compress", func(b *testing.B) {
				var dst []byte
				measure(b, set.bytes, func() {
					for i := range set.blobs {
						if set.blobs[i].enc != nil {
							dst = repo.Encode(dst[:0], set.blobs[i].data, repo.CompressAuto)
						}
					}
				})
				b.ReportMetric(float64(set.unique)/float64(set.enc), "ratio")
			})
			b.Run("seal", func(b *testing.B) {
				var dst []byte
				measure(b, set.bytes, func() {
					for i := range set.blobs {
						if bl := &set.blobs[i]; bl.enc != nil {
							dst = env.key.Seal(dst[:0], bl.enc, repo.BlobAD(repo.DataBlob, repo.ID(bl.id)))
						}
					}
				})
			})
			for _, w := range []int{1, 2} {
				b.Run(fmt.Sprintf("chain-%d", w), func(b *testing.B) {
					prev := runtime.GOMAXPROCS(w)
					defer runtime.GOMAXPROCS(prev)
					var st chainStats
					measure(b, set.bytes, func() { st = runChain(env, set, w) })
					if st.in != set.bytes || st.unique != set.unique {
						b.Fatalf("chain saw %d bytes, %d new; want %d, %d", st.in, st.unique, set.bytes, set.unique)
					}
					b.ReportMetric(float64(st.unique)/float64(st.enc), "ratio")
					b.ReportMetric(100*float64(set.bytes-set.unique)/float64(set.bytes), "dup-%")
				})
			}
		})
	}
}

// measure runs fn once per iteration, reports n bytes per iteration as MB/s
// and the same over the process's CPU time as MB/cpu-s.
func measure(b *testing.B, n int64, fn func()) {
	b.SetBytes(n)
	cpu0 := cpuTime()
	iters := 0
	for b.Loop() {
		fn()
		iters++
	}
	if cpu := cpuTime() - cpu0; cpu > 0 {
		b.ReportMetric(float64(n)*float64(iters)/1e6/cpu.Seconds(), "MB/cpu-s")
	}
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type chainStats struct{ in, unique, enc, sealed int64 }

// runChain takes set through chunk, ID, encode and seal the way Backup's
// workers do: w goroutines each chunk whole files; chunks of files of at
// least the minimum chunk size go to w blob workers, smaller files are
// finished by their reader; a chunk whose ID was seen before is not stored.
func runChain(env *stageEnv, set *stageSet, w int) chainStats {
	var st chainStats
	var mu sync.Mutex
	seen := make(map[[32]byte]struct{}, len(set.blobs))
	bufs := sync.Pool{New: func() any { b := make([]byte, 0, 2<<20); return &b }}
	type scratch struct{ enc, sealed []byte }
	store := func(s *scratch, data []byte) {
		id := env.key.BlobID(data)
		mu.Lock()
		_, dup := seen[id]
		seen[id] = struct{}{}
		mu.Unlock()
		atomic.AddInt64(&st.in, int64(len(data)))
		if dup {
			return
		}
		s.enc = repo.Encode(s.enc[:0], data, repo.CompressAuto)
		s.sealed = env.key.Seal(s.sealed[:0], s.enc, repo.BlobAD(repo.DataBlob, repo.ID(id)))
		atomic.AddInt64(&st.unique, int64(len(data)))
		atomic.AddInt64(&st.enc, int64(len(s.enc)))
		atomic.AddInt64(&st.sealed, int64(len(s.sealed)))
	}

	files := make(chan []byte)
	blobs := make(chan *[]byte)
	var readers, workers sync.WaitGroup
	for range w {
		readers.Add(1)
		go func() {
			defer readers.Done()
			ch := chunk.New(env.cfg.Polynomial, env.cfg.ChunkMin, env.cfg.ChunkMax, env.cfg.ChunkAvgBits)
			var s scratch
			for f := range files {
				spread := len(f) >= int(env.cfg.ChunkMin)
				ch.Reset(bytes.NewReader(f))
				for {
					bp := bufs.Get().(*[]byte)
					data, err := ch.Next((*bp)[:0])
					if err != nil {
						bufs.Put(bp)
						break
					}
					*bp = data
					if !spread {
						store(&s, data)
						bufs.Put(bp)
						continue
					}
					blobs <- bp
				}
			}
		}()
		workers.Add(1)
		go func() {
			defer workers.Done()
			var s scratch
			for bp := range blobs {
				store(&s, *bp)
				bufs.Put(bp)
			}
		}()
	}
	for _, f := range set.files {
		files <- f
	}
	close(files)
	readers.Wait()
	close(blobs)
	workers.Wait()
	return st
}

// loadStages reads the benchmark's content and prepares each set's chunks,
// IDs and encodings, once per process.
func loadStages() (*stageEnv, error) {
	ctx := context.Background()
	r, err := repo.Init(ctx, mem.New(), []byte("pw"), repo.InitOptions{KDF: crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		return nil, fmt.Errorf("init repository: %w", err)
	}
	env := &stageEnv{cfg: r.Config(), key: crypto.NewRandomKey(), sets: map[string]*stageSet{}}

	var roots []string
	if p := os.Getenv("CAIRN_BENCH_TREE"); p != "" {
		roots = []string{p}
	} else {
		for _, p := range []string{"/usr/local/go/src", stagesDataset} {
			if _, err := os.Stat(p); err == nil {
				roots = append(roots, p)
			}
		}
	}
	type file struct {
		path string
		size int64
	}
	var all []file
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.Type().IsRegular() {
				info, err := d.Info()
				if err != nil {
					return err
				}
				all = append(all, file{p, info.Size()})
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("walk %s: %w", root, err)
		}
	}
	// The dump: CAIRN_BENCH_DUMP, else the largest SQL file of at least 1 MiB.
	dump := os.Getenv("CAIRN_BENCH_DUMP")
	if dump == "" {
		var best int64 = 1 << 20
		for _, f := range all {
			if strings.HasSuffix(f.path, ".sql") && f.size >= best {
				dump, best = f.path, f.size
			}
		}
	}
	all = slices.DeleteFunc(all, func(f file) bool { return f.path == dump })
	if len(all) == 0 && dump == "" {
		return nil, fmt.Errorf("no files under %v: set CAIRN_BENCH_TREE", roots)
	}

	// Every k-th file in order of size, so that a sample keeps the tree's
	// mix of small and large files.
	slices.SortFunc(all, func(a, b file) int { return cmp.Or(cmp.Compare(a.size, b.size), strings.Compare(a.path, b.path)) })
	var total int64
	for _, f := range all {
		total += f.size
	}
	k := max(1, int((total+stagesCap-1)/stagesCap))
	files := &stageSet{}
	for i := k / 2; i < len(all); i += k {
		if files.bytes+all[i].size > stagesCap {
			continue
		}
		data, err := os.ReadFile(all[i].path)
		if err != nil {
			return nil, fmt.Errorf("read benchmark file: %w", err)
		}
		files.files = append(files.files, data)
		files.bytes += int64(len(data))
	}
	if len(files.files) > 0 {
		env.sets["files"] = files
	}
	env.desc = fmt.Sprintf("files: %d of %d files, %.1f of %.1f MiB, from %s",
		len(files.files), len(all), float64(files.bytes)/(1<<20), float64(total)/(1<<20), strings.Join(roots, ", "))
	if dump != "" {
		f, err := os.Open(dump)
		if err != nil {
			return nil, fmt.Errorf("open dump: %w", err)
		}
		data, err := io.ReadAll(io.LimitReader(f, stagesCap))
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read dump %s: %w", dump, err)
		}
		env.sets["dump"] = &stageSet{files: [][]byte{data}, bytes: int64(len(data))}
		env.desc += fmt.Sprintf("; dump: %s, %.1f MiB", dump, float64(len(data))/(1<<20))
	}

	for _, set := range env.sets {
		seen := map[[32]byte]bool{}
		ch := chunk.New(env.cfg.Polynomial, env.cfg.ChunkMin, env.cfg.ChunkMax, env.cfg.ChunkAvgBits)
		var buf []byte
		for _, f := range set.files {
			ch.Reset(bytes.NewReader(f))
			off := 0
			for {
				var err error
				if buf, err = ch.Next(buf[:0]); err != nil {
					break
				}
				bl := stageBlob{data: f[off : off+len(buf)]}
				off += len(buf)
				bl.id = env.key.BlobID(bl.data)
				if !seen[bl.id] {
					seen[bl.id] = true
					bl.enc = repo.Encode(nil, bl.data, repo.CompressAuto)
					set.unique += int64(len(bl.data))
					set.enc += int64(len(bl.enc))
				}
				set.blobs = append(set.blobs, bl)
			}
			if off != len(f) {
				return nil, fmt.Errorf("chunks cover %d of %d bytes", off, len(f))
			}
		}
	}
	return env, nil
}
