package index

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-backup/cairn/repo"
	bolt "go.etcd.io/bbolt"
)

// The cache keeps blob locations in sorted segments, one bbolt bucket each,
// written in key order. Keys are keyed hashes, so a single bucket filled as
// index files arrive would take inserts at random places: every insert then
// rewrites a page, and a transaction holds every page it touched in memory.
// Sorted segments are appended instead, and merged in the background of a
// flush (larger ones rarely), so writing costs O(log n) per blob and memory
// stays flat. A Bloom filter per segment keeps lookups of absent blobs, the
// common case in a backup, off the disk.

// cacheVersion names the cache layout; a cache of another layout is rebuilt.
const cacheVersion = 2

var (
	bucketMeta     = []byte("meta")
	bucketFiles    = []byte("files")    // index file ID -> IDs it supersedes
	bucketSegments = []byte("segments") // sequence number -> segment
	keyVersion     = []byte("version")
	keyBlobs       = []byte("blobs")  // in a segment: the sorted entries
	keyCount       = []byte("count")  // in a segment: how many, a uvarint
	keyFilter      = []byte("filter") // in a segment, written last
)

// segmentMax bounds the entries sorted in memory for one new segment; a
// variable so that tests can split adds cheaply.
var segmentMax = 1 << 18

const (
	// mergeBatch is how many entries of index files Load gathers before
	// adding them: a quarter of segmentMax, since a cold load of a large
	// index must leave room for the merges' filters under the memory limit
	// cmd/cairn sets (a heap held near it spends its time collecting).
	mergeBatch = 1 << 16
	// putBatch bounds the entries one write transaction holds in memory.
	putBatch = 1 << 16
	// mergeRatio: a segment is merged into its older neighbour once it holds
	// at least 1/mergeRatio as many entries, keeping O(log n) segments.
	mergeRatio = 4
	// How often pages read are dropped from the mapping: merges read
	// fast, and freeing a segment reads all its pages at once.
	dropIdle    = 100 * time.Millisecond
	dropWriting = 5 * time.Millisecond
)

type entry struct {
	k key
	v []byte // encodeLoc
}

type segment struct {
	name   [8]byte
	count  int
	filter bloom
}

type cache struct {
	db *bolt.DB

	mu   sync.RWMutex // guards segs; lookups read it while a merge runs
	segs []*segment   // oldest first

	writeMu sync.Mutex // one writer of segments at a time
	next    uint64     // sequence number of the next segment

	// Pages of the file that lookups and merges read stay mapped into the
	// process, and count in its RSS, until dropped (dropMapped): a
	// goroutine drops them every dropIdle, every dropWriting while an add
	// runs, so RSS does not grow towards the size of the file.
	writing  atomic.Int32
	nudge    chan struct{} // an add started
	stopDrop chan struct{}
	dropDone chan struct{}
	stopOnce sync.Once

	// Lookups keep their read transactions for the next lookup: beginning
	// and ending one cost as much as the lookup itself. A transaction sees
	// the file as it was when it began, and bbolt cannot grow its mapping
	// while one is open, so update ends the kept ones before it writes and
	// none is kept while a write runs or after one it overlapped (txGen).
	txMu      sync.Mutex
	txIdle    []*readTxn
	txGen     uint64 // writes ended
	txWriters int    // writes running; above 0 for good once closed
}

// maxIdleTx bounds the kept read transactions: one per concurrent lookup.
const maxIdleTx = 16

// readTxn is a kept read transaction with the blob buckets it has found. A
// read-only bbolt transaction does not remember its buckets, and finding a
// segment's again took three searches of the file per lookup, more than the
// lookup itself.
type readTxn struct {
	tx    *bolt.Tx
	blobs map[[8]byte]*bolt.Bucket // segment name -> its blobs; nil: gone
}

// blobsOf returns the blob bucket of segment name, nil if the segment is
// not in this transaction's view of the file.
func (t *readTxn) blobsOf(name [8]byte) *bolt.Bucket {
	if b, ok := t.blobs[name]; ok {
		return b
	}
	var b *bolt.Bucket
	if seg := t.tx.Bucket(bucketSegments).Bucket(name[:]); seg != nil {
		b = seg.Bucket(keyBlobs)
	}
	t.blobs[name] = b
	return b
}

func openCache(path string) (*cache, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	c, err := openCacheFile(path)
	if err != nil && !errors.Is(err, bolt.ErrTimeout) {
		// A damaged cache is worth nothing: start a new one.
		if rmErr := os.Remove(path); rmErr == nil {
			c, err = openCacheFile(path)
		}
	}
	return c, err
}

func openCacheFile(path string) (*cache, error) {
	// The freelist is kept synced (see add): without it, every open walks
	// every page to find the free ones, which takes time and maps the
	// whole file into the process, so that RSS would grow with the index.
	// Mapping 1 GiB from the start (address space, not memory) spares the
	// remaps as the file grows: each copied every node of the open write
	// transaction to the heap, 8% of what a first backup allocated.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, InitialMmapSize: 1 << 30})
	if err != nil {
		return nil, err
	}
	c := &cache{db: db}
	if err := c.load(); err != nil {
		db.Close()
		return nil, err
	}
	c.dropMapped() // the filters, copied out
	c.nudge = make(chan struct{}, 1)
	c.stopDrop, c.dropDone = make(chan struct{}), make(chan struct{})
	go c.dropLoop()
	return c, nil
}

func (c *cache) dropLoop() {
	defer close(c.dropDone)
	t := time.NewTimer(dropIdle)
	defer t.Stop()
	for {
		select {
		case <-c.stopDrop:
			return
		case <-c.nudge:
		case <-t.C:
		}
		c.dropMapped()
		if c.writing.Load() > 0 {
			t.Reset(dropWriting)
		} else {
			t.Reset(dropIdle)
		}
	}
}

// load reads the segments' filters, dropping segments a crash left unfinished
// and the whole content when it has another layout.
func (c *cache) load() error {
	return c.update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil || !bytes.Equal(meta.Get(keyVersion), []byte{cacheVersion}) {
			if err := resetBuckets(tx); err != nil {
				return err
			}
			return tx.Bucket(bucketMeta).Put(keyVersion, []byte{cacheVersion})
		}
		segs := tx.Bucket(bucketSegments)
		var unfinished [][]byte
		err := segs.ForEachBucket(func(name []byte) error {
			b := segs.Bucket(name)
			f := b.Get(keyFilter)
			if f == nil {
				unfinished = append(unfinished, slices.Clone(name))
				return nil
			}
			s := &segment{filter: decodeBloom(f)}
			copy(s.name[:], name)
			// Counting the entries would read every page of the segment;
			// segments written before keyCount existed are counted.
			if n, k := binary.Uvarint(b.Get(keyCount)); k > 0 {
				s.count = int(n)
			} else {
				s.count = b.Bucket(keyBlobs).Stats().KeyN
			}
			c.segs = append(c.segs, s)
			c.next = max(c.next, binary.BigEndian.Uint64(name)+1)
			return nil
		})
		if err != nil {
			return err
		}
		for _, name := range unfinished {
			if err := segs.DeleteBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
}

func resetBuckets(tx *bolt.Tx) error {
	var names [][]byte
	if err := tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
		names = append(names, slices.Clone(name))
		return nil
	}); err != nil {
		return err
	}
	for _, name := range names {
		if err := tx.DeleteBucket(name); err != nil {
			return err
		}
	}
	for _, b := range [][]byte{bucketMeta, bucketFiles, bucketSegments} {
		if _, err := tx.CreateBucket(b); err != nil {
			return err
		}
	}
	return nil
}

// reset forgets everything the cache holds.
func (c *cache) reset() error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	err := c.update(func(tx *bolt.Tx) error {
		if err := resetBuckets(tx); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keyVersion, []byte{cacheVersion})
	})
	c.mu.Lock()
	c.segs = nil
	c.mu.Unlock()
	return err
}

func (c *cache) close() error {
	c.stopOnce.Do(func() {
		close(c.stopDrop)
		<-c.dropDone
	})
	c.txMu.Lock()
	c.txWriters++ // nothing is kept from now on
	c.txMu.Unlock()
	c.endIdle()
	return c.db.Close()
}

// update runs fn in a write transaction, with no kept read transaction
// open (a remap would wait for it).
func (c *cache) update(fn func(*bolt.Tx) error) error {
	c.txMu.Lock()
	c.txWriters++
	c.txMu.Unlock()
	c.endIdle()
	err := c.db.Update(fn)
	c.txMu.Lock()
	c.txWriters--
	c.txGen++
	c.txMu.Unlock()
	return err
}

// endIdle ends the kept read transactions.
func (c *cache) endIdle() {
	c.txMu.Lock()
	idle := c.txIdle
	c.txIdle = nil
	c.txMu.Unlock()
	for _, t := range idle {
		_ = t.tx.Rollback()
	}
}

// readTx returns a read transaction, kept or new, and the count of writes
// ended when it was taken.
func (c *cache) readTx() (*readTxn, uint64, error) {
	c.txMu.Lock()
	gen := c.txGen
	if n := len(c.txIdle); n > 0 {
		t := c.txIdle[n-1]
		c.txIdle = c.txIdle[:n-1]
		c.txMu.Unlock()
		return t, gen, nil
	}
	c.txMu.Unlock()
	tx, err := c.db.Begin(false)
	if err != nil {
		return nil, gen, err
	}
	return &readTxn{tx: tx, blobs: map[[8]byte]*bolt.Bucket{}}, gen, nil
}

// doneTx keeps tx for another lookup if no write has run since it was
// taken: it then sees everything committed.
func (c *cache) doneTx(t *readTxn, gen uint64) {
	c.txMu.Lock()
	keep := gen == c.txGen && c.txWriters == 0 && len(c.txIdle) < maxIdleTx
	if keep {
		c.txIdle = append(c.txIdle, t)
	}
	c.txMu.Unlock()
	if !keep {
		_ = t.tx.Rollback()
	}
}

// files returns the merged index files and what each supersedes.
func (c *cache) files() (map[repo.ID][]repo.ID, error) {
	out := map[repo.ID][]repo.ID{}
	err := c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketFiles).ForEach(func(k, v []byte) error {
			out[repo.ID(k)] = splitIDs(v)
			return nil
		})
	})
	return out, err
}

// add stores entries as new segments and records files (index file ID ->
// supersedes, already encoded) as merged, once all entries are durable.
func (c *cache) add(ctx context.Context, entries []entry, files map[repo.ID][]byte) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	// Every commit that syncs the freelist writes all of it, and merges
	// leave many free pages: the segments are written without it, and it
	// is synced once at the end, so that the next open need not walk every
	// page to rebuild it. A crash in between costs that walk once.
	c.db.NoFreelistSync = true
	c.writing.Add(1)
	select {
	case c.nudge <- struct{}{}:
	default:
	}
	err := c.addSegments(ctx, entries, files)
	c.writing.Add(-1)
	c.dropMapped()
	c.db.NoFreelistSync = false
	if syncErr := c.update(func(*bolt.Tx) error { return nil }); err == nil && syncErr != nil {
		err = fmt.Errorf("sync index cache freelist: %w", syncErr)
	}
	return err
}

// addSegments is add, with writeMu held.
func (c *cache) addSegments(ctx context.Context, entries []entry, files map[repo.ID][]byte) error {
	if len(entries) == 0 {
		// Index files with no entries (only what they supersede) are
		// recorded all the same, or every load would read them again.
		err := c.update(func(tx *bolt.Tx) error { return putFiles(tx, files) })
		if err != nil {
			return fmt.Errorf("write index cache files: %w", err)
		}
		return nil
	}
	for len(entries) > 0 {
		n := min(len(entries), segmentMax)
		part := entries[:n]
		entries = entries[n:]
		if len(entries) == 0 {
			entries = nil // nothing keeps the batch alive while merging
		}
		slices.SortFunc(part, func(a, b entry) int { return bytes.Compare(a.k[:], b.k[:]) })
		var done map[repo.ID][]byte
		if len(entries) == 0 {
			done = files
		}
		s, err := c.writeSegment(ctx, func(yield func(entry) error) error {
			for i, e := range part {
				if i > 0 && part[i-1].k == e.k {
					continue
				}
				if err := yield(e); err != nil {
					return err
				}
			}
			return nil
		}, len(part), done)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.segs = append(c.segs, s)
		c.mu.Unlock()
		// After every segment, not once at the end: a full segment
		// followed by a short one would otherwise never be merged, the
		// segments would pile up, and the next short add would merge
		// them all one by one, rewriting the index once per segment.
		if err := c.compact(ctx); err != nil {
			return err
		}
	}
	return nil
}

// compact merges the newest segment into its older neighbour while that
// neighbour is not much larger.
func (c *cache) compact(ctx context.Context) error {
	for {
		c.mu.RLock()
		n := len(c.segs)
		var older, newer *segment
		if n >= 2 {
			older, newer = c.segs[n-2], c.segs[n-1]
		}
		c.mu.RUnlock()
		if n < 2 || older.count > mergeRatio*newer.count {
			return nil
		}
		s, err := c.merge(ctx, older, newer)
		if err != nil {
			return err
		}
		// Readers switch to the merged segment before the old ones go, so
		// a lookup never finds neither; a crash in between leaves duplicates,
		// which a later merge folds.
		c.mu.Lock()
		c.segs = append(c.segs[:n-2], s)
		c.mu.Unlock()
		err = c.update(func(tx *bolt.Tx) error {
			segs := tx.Bucket(bucketSegments)
			for _, old := range []*segment{older, newer} {
				if err := segs.DeleteBucket(old.name[:]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("drop merged index cache segments: %w", err)
		}
	}
}

// merge writes the union of a and b as one new segment.
func (c *cache) merge(ctx context.Context, a, b *segment) (*segment, error) {
	return c.writeSegment(ctx, func(yield func(entry) error) error {
		// Cursors live in one read transaction per batch, so no transaction
		// stays open long; each batch resumes after the last key it gave.
		var last []byte
		for {
			// Values are copied into one buffer per batch: an allocation
			// per value keeps the collector busy, and a buffer reused
			// across batches would change values not yet committed.
			batch := make([]entry, 0, putBatch)
			vals := make([]byte, 0, putBatch*maxLoc)
			clone := func(v []byte) []byte {
				vals = append(vals, v...)
				return vals[len(vals)-len(v) : len(vals) : len(vals)]
			}
			err := c.db.View(func(tx *bolt.Tx) error {
				segs := tx.Bucket(bucketSegments)
				ca := segs.Bucket(a.name[:]).Bucket(keyBlobs).Cursor()
				cb := segs.Bucket(b.name[:]).Bucket(keyBlobs).Cursor()
				ka, va := seekAfter(ca, last)
				kb, vb := seekAfter(cb, last)
				for len(batch) < putBatch && (ka != nil || kb != nil) {
					var e entry
					switch cmp := compareKeys(ka, kb); {
					case cmp < 0:
						copy(e.k[:], ka)
						e.v = clone(va)
						ka, va = ca.Next()
					case cmp > 0:
						copy(e.k[:], kb)
						e.v = clone(vb)
						kb, vb = cb.Next()
					default: // in both: one location is as good as another
						copy(e.k[:], ka)
						e.v = clone(va)
						ka, va = ca.Next()
						kb, vb = cb.Next()
					}
					batch = append(batch, e)
				}
				return nil
			})
			if err != nil {
				return err
			}
			if len(batch) == 0 {
				return nil
			}
			for _, e := range batch {
				if err := yield(e); err != nil {
					return err
				}
			}
			last = slices.Clone(batch[len(batch)-1].k[:])
		}
	}, a.count+b.count, nil)
}

// compareKeys orders keys with nil (an exhausted cursor) last.
func compareKeys(a, b []byte) int {
	switch {
	case a == nil:
		return 1
	case b == nil:
		return -1
	}
	return bytes.Compare(a, b)
}

func seekAfter(c *bolt.Cursor, last []byte) ([]byte, []byte) {
	if last == nil {
		return c.First()
	}
	k, v := c.Seek(last)
	if k != nil && bytes.Equal(k, last) {
		k, v = c.Next()
	}
	return k, v
}

// writeSegment writes the entries gen yields, in increasing key order, as a
// new segment in transactions of putBatch entries. The last transaction
// stores the filter, which marks the segment complete, and records files. It
// stops between transactions once ctx is done: that, or a crash, leaves a
// segment without a filter, which the next load drops.
func (c *cache) writeSegment(ctx context.Context, gen func(yield func(entry) error) error, sizeHint int, files map[repo.ID][]byte) (*segment, error) {
	s := &segment{filter: newBloom(sizeHint)}
	binary.BigEndian.PutUint64(s.name[:], c.next)
	c.next++
	var batch []entry
	flush := func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := c.update(func(tx *bolt.Tx) error {
			seg, err := tx.Bucket(bucketSegments).CreateBucketIfNotExists(s.name[:])
			if err != nil {
				return err
			}
			blobs, err := seg.CreateBucketIfNotExists(keyBlobs)
			if err != nil {
				return err
			}
			// Appends in key order: full pages, not half-empty ones.
			blobs.FillPercent = 1
			for i := range batch {
				if err := blobs.Put(batch[i].k[:], batch[i].v); err != nil {
					return err
				}
			}
			return nil
		})
		batch = batch[:0]
		return err
	}
	err := gen(func(e entry) error {
		s.filter.add(e.k)
		s.count++
		batch = append(batch, e)
		if len(batch) == putBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err == nil {
		err = c.update(func(tx *bolt.Tx) error {
			segs := tx.Bucket(bucketSegments)
			seg, err := segs.CreateBucketIfNotExists(s.name[:])
			if err != nil {
				return err
			}
			if _, err := seg.CreateBucketIfNotExists(keyBlobs); err != nil {
				return err
			}
			if err := seg.Put(keyCount, binary.AppendUvarint(nil, uint64(s.count))); err != nil {
				return err
			}
			if err := seg.Put(keyFilter, s.filter.encode()); err != nil {
				return err
			}
			return putFiles(tx, files)
		})
	}
	if err != nil {
		return nil, fmt.Errorf("write index cache segment: %w", err)
	}
	return s, nil
}

// putFiles records index files (ID -> supersedes, encoded) as merged.
func putFiles(tx *bolt.Tx, files map[repo.ID][]byte) error {
	fb := tx.Bucket(bucketFiles)
	for id, sup := range files {
		if err := fb.Put(slices.Clone(id[:]), sup); err != nil {
			return err
		}
	}
	return nil
}

// get appends the stored location of k to dst, newest segment first.
func (c *cache) get(k key, dst []byte) ([]byte, bool) {
	var buf [4]*segment
	maybe := buf[:0]
	c.mu.RLock()
	for i := len(c.segs) - 1; i >= 0; i-- {
		if c.segs[i].filter.has(k) {
			maybe = append(maybe, c.segs[i])
		}
	}
	c.mu.RUnlock()
	if len(maybe) == 0 {
		return nil, false
	}
	t, gen, err := c.readTx()
	if err != nil {
		return nil, false
	}
	var out []byte
	found := false
	for _, s := range maybe {
		blobs := t.blobsOf(s.name)
		if blobs == nil {
			continue // merged away since: a newer segment holds it
		}
		if v := blobs.Get(k[:]); v != nil {
			out, found = append(dst, v...), true
			break
		}
	}
	c.doneTx(t, gen)
	if !found && c.merged(maybe) {
		// A merge replaced a segment between the two steps: ask again.
		return c.get(k, dst)
	}
	return out, found
}

// merged reports whether any of segs is no longer current.
func (c *cache) merged(segs []*segment) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, s := range segs {
		if !slices.Contains(c.segs, s) {
			return true
		}
	}
	return false
}

// each calls fn for every stored entry once, newest location first.
func (c *cache) each(fn func(k key, v []byte) error) error {
	c.writeMu.Lock() // no merge drops a segment under the walk
	defer c.writeMu.Unlock()
	c.mu.RLock()
	segs := slices.Clone(c.segs)
	c.mu.RUnlock()
	return c.db.View(func(tx *bolt.Tx) error {
		all := tx.Bucket(bucketSegments)
		for i := len(segs) - 1; i >= 0; i-- {
			err := all.Bucket(segs[i].name[:]).Bucket(keyBlobs).ForEach(func(kb, v []byte) error {
				var k key
				copy(k[:], kb)
				for _, newer := range segs[i+1:] {
					if newer.filter.has(k) && all.Bucket(newer.name[:]).Bucket(keyBlobs).Get(kb) != nil {
						return nil // reported from the newer segment
					}
				}
				return fn(k, v)
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
}
