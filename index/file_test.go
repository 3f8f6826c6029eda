package index_test

import (
	"bytes"
	"encoding/binary"
	"math"
	"reflect"
	"testing"

	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/repo"
)

func id(b byte) repo.ID { return repo.ID{b, 0xee, b} }

// sampleFile has supersedes, an empty pack, both blob types and values that
// need several uvarint bytes.
func sampleFile() *index.File {
	p1, p2, p3 := id(0x10), id(0x20), id(0x30)
	return &index.File{
		Supersedes: []repo.ID{id(1), id(2)},
		Packs: []index.PackEntries{
			{Pack: p1, Blobs: []repo.PackedBlob{
				{Type: repo.DataBlob, ID: id(0x11), Pack: p1, Offset: 0, Length: 100, RawLength: 80},
				{Type: repo.TreeBlob, ID: id(0x12), Pack: p1, Offset: 100, Length: 1 << 20, RawLength: math.MaxUint32},
			}},
			{Pack: p2, Blobs: []repo.PackedBlob{}},
			{Pack: p3, Blobs: []repo.PackedBlob{
				{Type: repo.DataBlob, ID: id(0x31), Pack: p3, Offset: math.MaxUint32, Length: 41, RawLength: 0},
			}},
		},
	}
}

func TestFileRoundTrip(t *testing.T) {
	files := map[string]*index.File{
		"sample":            sampleFile(),
		"empty":             {},
		"only supersedes":   {Supersedes: []repo.ID{id(9)}},
		"one pack, no blob": {Packs: []index.PackEntries{{Pack: id(1), Blobs: []repo.PackedBlob{}}}},
	}
	for name, f := range files {
		got, err := index.DecodeFile(f.Encode())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(got.Supersedes) != len(f.Supersedes) || len(got.Packs) != len(f.Packs) {
			t.Fatalf("%s: decoded %+v, want %+v", name, got, f)
		}
		if len(f.Supersedes) > 0 && !reflect.DeepEqual(got.Supersedes, f.Supersedes) {
			t.Fatalf("%s: supersedes %v, want %v", name, got.Supersedes, f.Supersedes)
		}
		for i := range f.Packs {
			if !reflect.DeepEqual(got.Packs[i], f.Packs[i]) {
				t.Fatalf("%s: pack %d is %+v, want %+v", name, i, got.Packs[i], f.Packs[i])
			}
		}
	}
}

// TestFileLayout pins the bytes of docs/format.md, "Index files".
func TestFileLayout(t *testing.T) {
	p, b, sup := id(0xaa), id(0xbb), id(1)
	f := &index.File{
		Supersedes: []repo.ID{sup},
		Packs: []index.PackEntries{{Pack: p, Blobs: []repo.PackedBlob{
			{Type: repo.TreeBlob, ID: b, Offset: 300, Length: 200, RawLength: 5},
		}}},
	}
	var want []byte
	want = append(want, 1) // version
	want = append(want, 1) // one superseded file
	want = append(want, sup[:]...)
	want = append(want, p[:]...)
	want = append(want, 1) // one blob
	want = append(want, 1) // tree
	want = append(want, b[:]...)
	want = binary.AppendUvarint(want, 300)
	want = binary.AppendUvarint(want, 200)
	want = binary.AppendUvarint(want, 5)
	if got := f.Encode(); !bytes.Equal(got, want) {
		t.Fatalf("encoded\n%x\nwant\n%x", got, want)
	}
}

func TestDecodeFileRejects(t *testing.T) {
	good := sampleFile().Encode()
	cases := map[string][]byte{
		"empty":                  nil,
		"version 0":              append([]byte{0}, good[1:]...),
		"version 2":              append([]byte{2}, good[1:]...),
		"truncated by one":       good[:len(good)-1],
		"truncated in supersede": good[:1+1+20],
		"supersede count large":  {1, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"supersede count huge":   append([]byte{1}, binary.AppendUvarint(nil, math.MaxUint64)...),
		"overlong uvarint":       {1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01},
		"pack id cut":            append([]byte{1, 0}, make([]byte, 31)...),
		"no blob count":          append([]byte{1, 0}, make([]byte, 32)...),
		"blob count too large":   append(append([]byte{1, 0}, make([]byte, 32)...), 2),
		"offset beyond 32 bits": func() []byte {
			b := append([]byte{1, 0}, make([]byte, 32)...)
			b = append(b, 1, 0)
			b = append(b, make([]byte, 32)...)
			b = binary.AppendUvarint(b, 1<<32)
			return append(b, 0, 0)
		}(),
		"blob type 2": func() []byte {
			b := append([]byte{1, 0}, make([]byte, 32)...)
			b = append(b, 1, 2)
			b = append(b, make([]byte, 32)...)
			return append(b, 0, 41, 0)
		}(),
	}
	for name, b := range cases {
		if f, err := index.DecodeFile(b); err == nil {
			t.Errorf("%s: accepted %+v", name, f)
		}
	}
}

func FuzzDecodeFile(f *testing.F) {
	for _, file := range []*index.File{sampleFile(), {}, {Supersedes: []repo.ID{id(3)}}} {
		enc := file.Encode()
		f.Add(enc)
		for n := 0; n < len(enc); n += 5 {
			f.Add(enc[:n])
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := index.DecodeFile(b)
		if err != nil {
			if file != nil {
				t.Fatal("a file and an error")
			}
			return
		}
		for _, p := range file.Packs {
			for _, e := range p.Blobs {
				if e.Pack != p.Pack || e.Type > repo.TreeBlob {
					t.Fatalf("accepted entry %+v in pack %s", e, p.Pack.Short())
				}
			}
		}
		// Accepted input re-encodes to something that decodes the same
		// (not always to the same bytes: uvarints may be padded).
		enc := file.Encode()
		again, err := index.DecodeFile(enc)
		if err != nil {
			t.Fatalf("re-encoded file rejected: %v", err)
		}
		if !bytes.Equal(again.Encode(), enc) || len(again.Packs) != len(file.Packs) || len(again.Supersedes) != len(file.Supersedes) {
			t.Fatal("round trip changed the file")
		}
		for i := range file.Packs {
			if !reflect.DeepEqual(again.Packs[i], file.Packs[i]) {
				t.Fatalf("pack %d changed: %+v, %+v", i, file.Packs[i], again.Packs[i])
			}
		}
		if len(enc) > len(b) {
			t.Fatalf("re-encoding grew from %d to %d bytes", len(b), len(enc))
		}
	})
}
