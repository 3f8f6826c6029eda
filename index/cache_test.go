package index

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/repo"
	bolt "go.etcd.io/bbolt"
)

func testKey(i int) key {
	return keyOf(repo.DataBlob, repo.ID(crypto.Hash(fmt.Appendf(nil, "blob %d", i))))
}

func testValue(i int) []byte {
	return binary.AppendUvarint([]byte("loc"), uint64(i))
}

func testEntries(from, to int) []entry {
	var out []entry
	for i := from; i < to; i++ {
		out = append(out, entry{k: testKey(i), v: testValue(i)})
	}
	return out
}

func newTestCache(t *testing.T) (*cache, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "index.db")
	c, err := openCache(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.close() })
	return c, path
}

func checkCache(t *testing.T, c *cache, present, absentFrom, absentTo int) {
	t.Helper()
	for i := range present {
		v, ok := c.get(testKey(i), nil)
		if !ok || !bytes.Equal(v, testValue(i)) {
			t.Fatalf("entry %d: got %q, %v", i, v, ok)
		}
	}
	for i := absentFrom; i < absentTo; i++ {
		if v, ok := c.get(testKey(i), nil); ok {
			t.Fatalf("absent entry %d found: %q", i, v)
		}
	}
}

func TestBloom(t *testing.T) {
	const n = 100000
	f := newBloom(n)
	for i := range n {
		f.add(testKey(i))
	}
	g := decodeBloom(f.encode())
	fp := 0
	for i := range 2 * n {
		if i < n && !g.has(testKey(i)) {
			t.Fatalf("key %d added but not found", i)
		}
		if i >= n && g.has(testKey(i)) {
			fp++
		}
	}
	if rate := float64(fp) / n; rate > 0.02 {
		t.Fatalf("false positive rate %.3f, want about 0.01", rate)
	}
	if bad := decodeBloom([]byte("short")); !bad.has(testKey(1)) {
		t.Fatal("a malformed filter must answer maybe")
	}
}

// TestCacheSegments: entries added in many batches of different sizes are
// all found after the merges that follow, across a reopen, and the number
// of segments stays logarithmic.
func TestCacheSegments(t *testing.T) {
	c, path := newTestCache(t)
	total := 0
	for round, size := range []int{10, 500, 3, 7000, 20, 20, 20, 20, 1, 30000, 5, 100} {
		if err := c.add(context.Background(), testEntries(total, total+size), map[repo.ID][]byte{{byte(round)}: nil}); err != nil {
			t.Fatal(err)
		}
		total += size
		checkCache(t, c, total, total, total+1000)
	}
	if len(c.segs) > 8 {
		t.Fatalf("%d segments for %d entries", len(c.segs), total)
	}
	files, err := c.files()
	if err != nil || len(files) != 12 {
		t.Fatalf("files: %d, %v", len(files), err)
	}
	n := 0
	if err := c.each(func(key, []byte) error { n++; return nil }); err != nil || n != total {
		t.Fatalf("each: %d entries, %v; want %d", n, err, total)
	}
	c.close()
	c, err = openCache(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	checkCache(t, c, total, total, total+1000)
}

// TestCacheSplitAdds: adds larger than one segment, each split into a full
// segment and a short one, are merged as they come, so the number of
// segments stays logarithmic; the counts survive a reopen.
func TestCacheSplitAdds(t *testing.T) {
	defer func(n int) { segmentMax = n }(segmentMax)
	segmentMax = 100
	c, path := newTestCache(t)
	total := 0
	for round := range 20 {
		if err := c.add(context.Background(), testEntries(total, total+120), map[repo.ID][]byte{{byte(round)}: nil}); err != nil {
			t.Fatal(err)
		}
		total += 120
		if len(c.segs) > 4 {
			t.Fatalf("%d segments after %d adds", len(c.segs), round+1)
		}
	}
	checkCache(t, c, total, total, total+1000)
	var counts []int
	for _, s := range c.segs {
		counts = append(counts, s.count)
	}
	c.close()
	c, err := openCache(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	var reopened []int
	for _, s := range c.segs {
		reopened = append(reopened, s.count)
	}
	if fmt.Sprint(counts) != fmt.Sprint(reopened) {
		t.Fatalf("segment counts %v after a reopen, want %v", reopened, counts)
	}
}

// TestCacheDuplicates: the same key in two batches is stored and listed once.
func TestCacheDuplicates(t *testing.T) {
	c, _ := newTestCache(t)
	for range 3 {
		if err := c.add(context.Background(), testEntries(0, 100), nil); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	if err := c.each(func(key, []byte) error { n++; return nil }); err != nil || n != 100 {
		t.Fatalf("each: %d entries, %v; want 100", n, err)
	}
}

// TestCacheUnfinishedSegment: a segment a crash left without its filter is
// dropped on open, and the files it was for are not recorded as merged.
func TestCacheUnfinishedSegment(t *testing.T) {
	c, path := newTestCache(t)
	if err := c.add(context.Background(), testEntries(0, 50), map[repo.ID][]byte{{1}: nil}); err != nil {
		t.Fatal(err)
	}
	c.close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		seg, err := tx.Bucket(bucketSegments).CreateBucket([]byte("\xff\xff\xff\xff\xff\xff\xff\xff"))
		if err != nil {
			return err
		}
		b, err := seg.CreateBucket(keyBlobs)
		if err != nil {
			return err
		}
		k := testKey(999)
		return b.Put(k[:], testValue(999))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	c, err = openCache(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	checkCache(t, c, 50, 999, 1000)
	if len(c.segs) != 1 {
		t.Fatalf("%d segments after reopen, want 1", len(c.segs))
	}
}

// TestCacheOldLayout: a cache of another layout is emptied, not misread.
func TestCacheOldLayout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range []string{"blobs", "files"} {
			b, err := tx.CreateBucket([]byte(name))
			if err != nil {
				return err
			}
			if err := b.Put(bytes.Repeat([]byte{1}, 32), nil); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	c, err := openCache(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if files, err := c.files(); err != nil || len(files) != 0 {
		t.Fatalf("old layout's files kept: %v, %v", files, err)
	}
}

// TestCacheLookupsDuringMerges: readers never miss a stored entry while
// adds and merges replace segments under them, and an entry is found as
// soon as its add returns, though readers keep transactions begun earlier.
func TestCacheLookupsDuringMerges(t *testing.T) {
	c, _ := newTestCache(t)
	if err := c.add(context.Background(), testEntries(0, 1000), nil); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var misses atomic.Int64
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; !stop.Load(); i = (i + 7) % 1000 {
				if _, ok := c.get(testKey(i), nil); !ok {
					misses.Add(1)
				}
			}
		}()
	}
	for from := 1000; from < 20000; from += 1000 {
		if err := c.add(context.Background(), testEntries(from, from+1000), nil); err != nil {
			t.Fatal(err)
		}
		for i := from; i < from+1000; i += 7 {
			if _, ok := c.get(testKey(i), nil); !ok {
				t.Fatalf("entry %d not found right after its add", i)
			}
		}
	}
	stop.Store(true)
	wg.Wait()
	if m := misses.Load(); m != 0 {
		t.Fatalf("%d lookups missed a stored entry during merges", m)
	}
	checkCache(t, c, 20000, 20000, 21000)
}

// TestCacheDamaged: a cache file that is not a database is replaced.
func TestCacheDamaged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	if err := os.WriteFile(path, bytes.Repeat([]byte("garbage "), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := openCache(path)
	if err != nil {
		t.Fatalf("damaged cache not replaced: %v", err)
	}
	defer c.close()
	if err := c.add(context.Background(), testEntries(0, 10), nil); err != nil {
		t.Fatal(err)
	}
	checkCache(t, c, 10, 10, 20)
}

// stopAfter is a context that reports itself cancelled after n checks.
type stopAfter struct {
	context.Context
	n atomic.Int32
}

func (s *stopAfter) Err() error {
	if s.n.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

// TestCacheAddStops: an add that is cancelled stops between transactions
// (a long merge need not run to its end) and leaves a cache that opens and
// takes the same entries again.
func TestCacheAddStops(t *testing.T) {
	c, path := newTestCache(t)
	const n = 3*putBatch + 10
	ctx := &stopAfter{Context: context.Background()}
	ctx.n.Store(2)
	if err := c.add(ctx, testEntries(0, n), map[repo.ID][]byte{{1}: nil}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled add: %v", err)
	}
	c.close()
	c, err := openCache(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	files, err := c.files()
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 0 {
		t.Fatalf("a cancelled add recorded %d files as merged", len(files))
	}
	if err := c.add(context.Background(), testEntries(0, n), map[repo.ID][]byte{{1}: nil}); err != nil {
		t.Fatal(err)
	}
	checkCache(t, c, n, n, n+100)
}

// TestCacheKeepsNoStaleTransaction: a read transaction taken before a write
// and handed back after it is ended, not kept for the next lookup, which
// would not see the write.
func TestCacheKeepsNoStaleTransaction(t *testing.T) {
	c, _ := newTestCache(t)
	if err := c.add(context.Background(), testEntries(0, 10), nil); err != nil {
		t.Fatal(err)
	}
	tx, gen, err := c.readTx()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.add(context.Background(), testEntries(10, 20), nil); err != nil {
		t.Fatal(err)
	}
	c.doneTx(tx, gen)
	checkCache(t, c, 20, 20, 30)
}
