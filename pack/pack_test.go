package pack_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand"
	"os"
	"reflect"
	"testing"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
)

// fixedKey makes fuzz inputs reproducible.
func fixedKey(t testing.TB) *crypto.Key {
	k, err := crypto.KeyFromBytes(bytes.Repeat([]byte{7}, crypto.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func random(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// sealBlob seals data as a blob the way the format describes.
func sealBlob(key *crypto.Key, t repo.BlobType, data []byte) (repo.ID, []byte) {
	id := repo.ID(key.BlobID(data))
	return id, key.Seal(nil, repo.Encode(nil, data, repo.CompressAuto), repo.BlobAD(t, id))
}

type testPack struct {
	data  []byte
	blobs []repo.PackedBlob
	plain [][]byte
}

func buildPack(t testing.TB, key *crypto.Key, bt repo.BlobType, sizes []int) testPack {
	t.Helper()
	// Data packs are built in a file and tree packs in memory, as Store does.
	w := pack.NewWriter(bt, nil)
	if bt == repo.DataBlob {
		var err error
		if w, err = pack.NewFileWriter(bt, t.TempDir(), true); err != nil {
			t.Fatal(err)
		}
	}
	var p testPack
	for i, n := range sizes {
		plain := random(int64(i), n)
		if i%2 == 1 {
			plain = bytes.Repeat([]byte{byte(i)}, n) // compressible
		}
		id, sealed := sealBlob(key, bt, plain)
		w.Add(id, sealed, len(plain))
		p.plain = append(p.plain, plain)
	}
	if w.Count() != len(sizes) {
		t.Fatalf("Count %d, want %d", w.Count(), len(sizes))
	}
	data, id, blobs := finishPack(t, key, w)
	if id != repo.ID(crypto.Hash(data)) {
		t.Fatalf("pack ID %s is not the hash of its %d bytes", id.Short(), len(data))
	}
	p.data, p.blobs = data, blobs
	return p
}

// finishPack finishes w and returns the pack's bytes, ID and blobs.
func finishPack(t testing.TB, key *crypto.Key, w *pack.Writer) ([]byte, repo.ID, []repo.PackedBlob) {
	t.Helper()
	f, err := w.Finish(key)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := make([]byte, f.Size)
	if _, err := f.Data.ReadAt(data, 0); err != nil {
		t.Fatal(err)
	}
	return data, f.ID, f.Blobs
}

func store(t testing.TB, be repo.Backend, data []byte) repo.ID {
	t.Helper()
	id := repo.ID(crypto.Hash(data))
	if err := be.Save(context.Background(), repo.Handle{Type: repo.PackFile, Name: id.String()}, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	return id
}

// encodeHeader writes a header plaintext (after its encoding byte) as
// docs/format.md describes it.
func encodeHeader(blobs []repo.PackedBlob) []byte {
	b := []byte{1}
	for _, e := range blobs {
		b = append(b, byte(e.Type))
		b = append(b, e.ID[:]...)
		b = binary.LittleEndian.AppendUint32(b, e.Length)
		b = binary.LittleEndian.AppendUint32(b, e.RawLength)
		b = append(b, 0, 0, 0, 0)
	}
	return b
}

func TestWriterReadHeaderRoundTrip(t *testing.T) {
	key := fixedKey(t)
	ctx := context.Background()
	// 2000 records make a header larger than ReadHeader's first read.
	many := make([]int, 2000)
	for i := range many {
		many[i] = i % 50
	}
	cases := map[string][]int{
		"one empty blob": {0},
		"one blob":       {1000},
		"mixed":          {10, 0, 70000, 3, 100000},
		"2000 blobs":     many,
	}
	for name, sizes := range cases {
		for _, bt := range []repo.BlobType{repo.DataBlob, repo.TreeBlob} {
			p := buildPack(t, key, bt, sizes)
			be := mem.New()
			id := store(t, be, p.data)
			got, err := pack.ReadHeader(ctx, be, key, id)
			if err != nil {
				t.Fatalf("%s, %s: ReadHeader: %v", name, bt, err)
			}
			if len(got) != len(sizes) {
				t.Fatalf("%s, %s: %d blobs, want %d", name, bt, len(got), len(sizes))
			}
			var off uint32
			for i, e := range got {
				want := p.blobs[i]
				want.Pack = id
				if e != want {
					t.Fatalf("%s, %s: blob %d is %+v, Finish said %+v", name, bt, i, e, want)
				}
				if e.Type != bt || e.Offset != off || int(e.RawLength) != sizes[i] {
					t.Fatalf("%s, %s: blob %d: %+v", name, bt, i, e)
				}
				off += e.Length
				plain, err := pack.OpenBlob(key, e, p.data[e.Offset:e.Offset+e.Length], nil)
				if err != nil || !bytes.Equal(plain, p.plain[i]) {
					t.Fatalf("%s, %s: blob %d: %v", name, bt, i, err)
				}
			}
		}
	}
}

// TestHeaderLayout decodes a pack by hand from docs/format.md.
func TestHeaderLayout(t *testing.T) {
	key := fixedKey(t)
	p := buildPack(t, key, repo.TreeBlob, []int{5, 500, 50})
	n := int(binary.LittleEndian.Uint32(p.data[len(p.data)-4:]))
	blobEnd := len(p.data) - 4 - n
	var sum uint32
	for _, b := range p.blobs {
		sum += b.Length
	}
	if int(sum) != blobEnd {
		t.Fatalf("blobs take %d bytes, header starts at %d", sum, blobEnd)
	}
	plain, err := key.Open(nil, p.data[blobEnd:len(p.data)-4], []byte("cairn pack header"))
	if err != nil {
		t.Fatalf("header does not open with the documented associated data: %v", err)
	}
	if plain[0] != 0 {
		t.Fatalf("encoding byte %d, want 0 (raw)", plain[0])
	}
	if !bytes.Equal(plain[1:], encodeHeader(p.blobs)) {
		t.Fatalf("header plaintext differs from the documented layout")
	}
	// Each blob is sealed with its type and ID as associated data.
	for _, b := range p.blobs {
		if _, err := key.Open(nil, p.data[b.Offset:b.Offset+b.Length], append([]byte{byte(b.Type)}, b.ID[:]...)); err != nil {
			t.Fatalf("blob %s: %v", b.ID.Short(), err)
		}
	}
}

// TestCorruptionDetected flips every byte of a small pack: a flip in the
// header or its length breaks ReadHeader; a flip in a blob breaks exactly
// that blob.
func TestCorruptionDetected(t *testing.T) {
	key := fixedKey(t)
	ctx := context.Background()
	p := buildPack(t, key, repo.DataBlob, []int{40, 0, 100})
	blobEnd := uint32(0)
	for _, b := range p.blobs {
		blobEnd += b.Length
	}
	for i := range p.data {
		bad := append([]byte(nil), p.data...)
		bad[i] ^= 0x04
		be := mem.New()
		id := store(t, be, bad)
		got, err := pack.ReadHeader(ctx, be, key, id)
		if uint32(i) >= blobEnd {
			if err == nil {
				t.Fatalf("byte %d (header) flipped: ReadHeader succeeded", i)
			}
			continue
		}
		if err != nil {
			t.Fatalf("byte %d (blob) flipped: ReadHeader: %v", i, err)
		}
		for j, e := range got {
			_, err := pack.OpenBlob(key, e, bad[e.Offset:e.Offset+e.Length], nil)
			inBlob := uint32(i) >= e.Offset && uint32(i) < e.Offset+e.Length
			if inBlob && err == nil {
				t.Fatalf("byte %d flipped in blob %d: OpenBlob succeeded", i, j)
			}
			if !inBlob && err != nil {
				t.Fatalf("byte %d flipped outside blob %d: %v", i, j, err)
			}
		}
	}
}

func TestOpenBlobChecks(t *testing.T) {
	key := fixedKey(t)
	p := buildPack(t, key, repo.DataBlob, []int{300, 301})
	e := p.blobs[0]
	sealed := p.data[e.Offset : e.Offset+e.Length]
	if _, err := pack.OpenBlob(key, e, sealed, nil); err != nil {
		t.Fatal(err)
	}
	edits := map[string]func(*repo.PackedBlob){
		"other id":         func(e *repo.PackedBlob) { e.ID = p.blobs[1].ID },
		"other type":       func(e *repo.PackedBlob) { e.Type = repo.TreeBlob },
		"raw length +1":    func(e *repo.PackedBlob) { e.RawLength++ },
		"raw length -1":    func(e *repo.PackedBlob) { e.RawLength-- },
		"raw length large": func(e *repo.PackedBlob) { e.RawLength = 1 << 30 },
	}
	for name, edit := range edits {
		e2 := e
		edit(&e2)
		if _, err := pack.OpenBlob(key, e2, sealed, nil); err == nil {
			t.Errorf("%s: OpenBlob accepted the blob", name)
		}
	}
	if _, err := pack.OpenBlob(crypto.NewRandomKey(), e, sealed, nil); !errors.Is(err, crypto.ErrAuth) {
		t.Errorf("another key: %v, want ErrAuth", err)
	}
	// A blob sealed under its own ID but holding other content.
	other := random(99, 300)
	forged := key.Seal(nil, repo.Encode(nil, other, repo.CompressOff), repo.BlobAD(e.Type, e.ID))
	if _, err := pack.OpenBlob(key, e, forged, nil); err == nil {
		t.Error("OpenBlob accepted content that does not match its ID")
	}
}

func TestReadHeaderDamagedPacks(t *testing.T) {
	key := fixedKey(t)
	ctx := context.Background()
	good := buildPack(t, key, repo.DataBlob, []int{100, 200}).data
	hugeLen := binary.LittleEndian.AppendUint32(bytes.Clone(good[:len(good)-4]), pack.MaxHeaderSize+1)
	cases := map[string][]byte{
		"empty":               {},
		"one byte":            {1},
		"three bytes":         {1, 2, 3},
		"length only":         {10, 0, 0, 0},
		"length beyond pack":  binary.LittleEndian.AppendUint32(make([]byte, 50), 1000),
		"length zero":         binary.LittleEndian.AppendUint32(make([]byte, 50), 0),
		"header too large":    hugeLen,
		"truncated at front":  good[1:],
		"truncated at end":    good[:len(good)-1],
		"blob bytes appended": append(bytes.Clone(good[:len(good)-4]), append([]byte{0}, good[len(good)-4:]...)...),
		"other key":           buildPack(t, crypto.NewRandomKey(), repo.DataBlob, []int{10}).data,
	}
	for name, data := range cases {
		be := mem.New()
		id := store(t, be, data)
		if blobs, err := pack.ReadHeader(ctx, be, key, id); err == nil {
			t.Errorf("%s: ReadHeader accepted %d blobs", name, len(blobs))
		}
	}
	if _, err := pack.ReadHeader(ctx, mem.New(), key, repo.ID{1}); !errors.Is(err, repo.ErrNotFound) {
		t.Errorf("missing pack: %v, want ErrNotFound", err)
	}
}

func TestTrailerSize(t *testing.T) {
	le := func(n uint32) []byte { return binary.LittleEndian.AppendUint32(nil, n) }
	minLen := uint32(crypto.Overhead + 2)
	cases := []struct {
		last4    []byte
		packSize int64
		want     int64 // 0: error
	}{
		{le(minLen), int64(minLen) + 4, int64(minLen) + 4},
		{le(minLen), 1000, int64(minLen) + 4},
		{le(500), 504, 504},
		{le(500), 503, 0},
		{le(minLen - 1), 1000, 0},
		{le(0), 1000, 0},
		{le(pack.MaxHeaderSize), pack.MaxHeaderSize + 4, pack.MaxHeaderSize + 4},
		{le(pack.MaxHeaderSize + 1), 1 << 30, 0},
		{le(0xffffffff), 1 << 40, 0},
		{le(100), -1, 0},
	}
	for _, tc := range cases {
		got, err := pack.TrailerSize(tc.last4, tc.packSize)
		if tc.want == 0 {
			if err == nil {
				t.Errorf("TrailerSize(%v, %d) = %d, want an error", tc.last4, tc.packSize, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("TrailerSize(%v, %d) = %d, %v; want %d", tc.last4, tc.packSize, got, err, tc.want)
		}
	}
}

func TestDecodeHeader(t *testing.T) {
	minLen := uint32(crypto.Overhead + 1)
	blobs := []repo.PackedBlob{
		{Type: repo.DataBlob, ID: repo.ID{1}, Length: 100, RawLength: 90},
		{Type: repo.DataBlob, ID: repo.ID{2}, Length: minLen, RawLength: 0},
		{Type: repo.DataBlob, ID: repo.ID{3}, Length: 1 << 20, RawLength: 1 << 21},
	}
	total := int64(100 + minLen + 1<<20)
	got, err := pack.DecodeHeader(encodeHeader(blobs), total)
	if err != nil {
		t.Fatal(err)
	}
	off := uint32(0)
	for i := range blobs {
		blobs[i].Offset = off
		off += blobs[i].Length
	}
	if !reflect.DeepEqual(got, blobs) {
		t.Fatalf("decoded %+v, want %+v", got, blobs)
	}
	if got, err := pack.DecodeHeader([]byte{1}, 0); err != nil || len(got) != 0 {
		t.Fatalf("empty header: %v, %v", got, err)
	}

	mod := func(f func(b []byte) []byte) []byte { return f(encodeHeader(blobs)) }
	cases := []struct {
		name   string
		plain  []byte
		offset int64
	}{
		{"empty", nil, 0},
		{"version 0", mod(func(b []byte) []byte { b[0] = 0; return b }), total},
		{"version 2", mod(func(b []byte) []byte { b[0] = 2; return b }), total},
		{"partial record", mod(func(b []byte) []byte { return b[:len(b)-1] }), total},
		{"extra byte", mod(func(b []byte) []byte { return append(b, 0) }), total},
		{"blob type 2", mod(func(b []byte) []byte { b[1] = 2; return b }), total},
		{"blob too short", mod(func(b []byte) []byte { b[1+45+33] = byte(minLen - 1); return b }), total - 1},
		{"lengths short of the header", encodeHeader(blobs), total + 1},
		{"lengths past the header", encodeHeader(blobs), total - 1},
		{"header at zero", encodeHeader(blobs), 0},
		{"negative offset", []byte{1}, -1},
	}
	for _, tc := range cases {
		if got, err := pack.DecodeHeader(tc.plain, tc.offset); err == nil {
			t.Errorf("%s: accepted %+v", tc.name, got)
		}
	}
}

func FuzzDecodeHeader(f *testing.F) {
	key := fixedKey(f)
	for _, sizes := range [][]int{{}, {0}, {10, 2000}, {1, 2, 3, 4, 5}} {
		p := buildPack(f, key, repo.DataBlob, sizes)
		plain := encodeHeader(p.blobs)
		var total int64
		for _, b := range p.blobs {
			total += int64(b.Length)
		}
		f.Add(plain, total)
		f.Add(plain, total+1)
		for n := 0; n < len(plain); n += 11 {
			f.Add(plain[:n], total)
		}
	}
	f.Fuzz(func(t *testing.T, plain []byte, offset int64) {
		blobs, err := pack.DecodeHeader(plain, offset)
		if err != nil {
			return
		}
		// Accepted: blobs tile the space before the header exactly.
		var off int64
		for _, b := range blobs {
			if int64(b.Offset) != off || b.Type > repo.TreeBlob || b.Length <= crypto.Overhead {
				t.Fatalf("accepted blob %+v at %d", b, off)
			}
			off += int64(b.Length)
		}
		if off != offset {
			t.Fatalf("blobs end at %d, header at %d", off, offset)
		}
		again, err := pack.DecodeHeader(encodeHeader(blobs), offset)
		if err != nil || !reflect.DeepEqual(again, blobs) {
			t.Fatalf("re-encoded header: %v", err)
		}
	})
}

func FuzzParseTrailer(f *testing.F) {
	key := fixedKey(f)
	for _, sizes := range [][]int{{0}, {100, 5}, {1, 2, 3, 4, 5, 6, 7, 8}} {
		data := buildPack(f, key, repo.TreeBlob, sizes).data
		size := int64(len(data))
		f.Add(data, size)
		f.Add(data, size+1)
		f.Add(data, size-1)
		for n := 1; n <= len(data); n += 13 {
			f.Add(data[len(data)-n:], size) // tails of every length
			f.Add(data[:n], size)
		}
	}
	f.Add([]byte{}, int64(0))
	f.Add([]byte{255, 255, 255, 255}, int64(4))
	f.Fuzz(func(t *testing.T, tail []byte, packSize int64) {
		if len(tail) >= 4 {
			if n, err := pack.TrailerSize(tail[len(tail)-4:], packSize); err == nil && (n < 4 || n > packSize) {
				t.Fatalf("TrailerSize %d for a pack of %d bytes", n, packSize)
			}
		}
		blobs, err := pack.ParseTrailer(key, tail, packSize)
		if err != nil {
			return
		}
		n, err := pack.TrailerSize(tail[len(tail)-4:], packSize)
		if err != nil {
			t.Fatalf("header accepted, its length not: %v", err)
		}
		var sum int64
		for _, b := range blobs {
			sum += int64(b.Length)
		}
		if sum != packSize-n {
			t.Fatalf("blobs take %d bytes of a %d-byte pack with a %d-byte trailer", sum, packSize, n)
		}
	})
}

// TestFileWriterWaysAgree fills the same pack in memory, in a file through
// the page cache and in a file past it (O_DIRECT where the file system takes
// it: /dev/shm may not), with blobs that straddle the 1 MiB writes: every
// way must give the same blob bytes (the header has a nonce of its own) and
// a pack named by the hash of what is in the file.
func TestFileWriterWaysAgree(t *testing.T) {
	key := fixedKey(t)
	sizes := []int{1, 1 << 20, 4095, 4097, 3 << 20, 10, (1 << 20) - 7, 0, 123457}
	type blob struct {
		id     repo.ID
		sealed []byte
		n      int
	}
	var blobs []blob
	for i, n := range sizes {
		id, sealed := sealBlob(key, repo.DataBlob, random(int64(i), n))
		blobs = append(blobs, blob{id, sealed, n})
	}
	fill := func(w *pack.Writer) ([]byte, repo.ID) {
		t.Helper()
		for _, b := range blobs {
			w.Add(b.id, b.sealed, b.n)
		}
		data, id, _ := finishPack(t, key, w)
		return data, id
	}
	want, _ := fill(pack.NewWriter(repo.DataBlob, nil))
	var blobBytes int
	for _, b := range blobs {
		blobBytes += len(b.sealed)
	}
	dirs := []string{t.TempDir()}
	if shm, err := os.MkdirTemp("/dev/shm", "cairn-test-"); err == nil {
		t.Cleanup(func() { os.RemoveAll(shm) })
		dirs = append(dirs, shm)
	}
	for _, dir := range dirs {
		for _, direct := range []bool{false, true} {
			w, err := pack.NewFileWriter(repo.DataBlob, dir, direct)
			if err != nil {
				t.Fatal(err)
			}
			got, id := fill(w)
			if len(got) != len(want) || !bytes.Equal(got[:blobBytes], want[:blobBytes]) {
				t.Fatalf("file pack in %s (direct %v): %d bytes, not the %d in memory", dir, direct, len(got), len(want))
			}
			if id != repo.ID(crypto.Hash(got)) {
				t.Fatalf("file pack in %s (direct %v): ID %s is not the hash of its bytes", dir, direct, id.Short())
			}
			if _, err := pack.ParseTrailer(key, got, int64(len(got))); err != nil {
				t.Fatalf("file pack in %s (direct %v): %v", dir, direct, err)
			}
		}
	}
}
