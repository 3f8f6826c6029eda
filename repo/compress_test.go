package repo_test

import (
	"bytes"
	"compress/gzip"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/cairn-backup/cairn/repo"
	"github.com/klauspost/compress/zstd"
)

var modes = []repo.Compression{repo.CompressAuto, repo.CompressOff, repo.CompressMax}

func TestParseCompression(t *testing.T) {
	for _, s := range []string{"auto", "off", "max"} {
		if c, err := repo.ParseCompression(s); err != nil || string(c) != s {
			t.Errorf("ParseCompression(%q) = %q, %v", s, c, err)
		}
	}
	for _, s := range []string{"", "Auto", "on", "fastest", " max"} {
		if _, err := repo.ParseCompression(s); err == nil {
			t.Errorf("ParseCompression(%q) accepted", s)
		}
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	inputs := map[string][]byte{
		"empty":        {},
		"one byte":     {42},
		"63 zeros":     make([]byte, 63),
		"64 zeros":     make([]byte, 64),
		"text":         []byte(strings.Repeat("the quick brown fox ", 5000)),
		"random":       random(1, 100000),
		"half random":  append(random(2, 50000), make([]byte, 50000)...),
		"random 1 MiB": random(3, 1<<20),
	}
	for name, data := range inputs {
		for _, mode := range modes {
			enc := repo.Encode(nil, data, mode)
			got, err := repo.Decode(nil, enc, 0)
			if err != nil {
				t.Errorf("%s, %s: decode: %v", name, mode, err)
				continue
			}
			if !bytes.Equal(got, data) {
				t.Errorf("%s, %s: round trip differs", name, mode)
			}
			// Encode appends, Decode appends.
			enc2 := repo.Encode([]byte("pre"), data, mode)
			if !bytes.HasPrefix(enc2, []byte("pre")) {
				t.Errorf("%s, %s: Encode overwrote dst", name, mode)
			}
			got2, err := repo.Decode([]byte("pre"), enc2[3:], 0)
			if err != nil || !bytes.Equal(got2, append([]byte("pre"), data...)) {
				t.Errorf("%s, %s: Decode did not append to dst: %v", name, mode, err)
			}
		}
	}
}

func TestEncodeChoices(t *testing.T) {
	text := []byte(strings.Repeat("compressible text, ", 10000))
	noise := random(4, 200000)
	cases := []struct {
		name       string
		data       []byte
		mode       repo.Compression
		compressed bool
	}{
		{"off never compresses", text, repo.CompressOff, false},
		{"auto compresses text", text, repo.CompressAuto, true},
		{"max compresses text", text, repo.CompressMax, true},
		{"auto stores noise raw", noise, repo.CompressAuto, false},
		{"tiny input stays raw", []byte("short"), repo.CompressMax, false},
	}
	for _, tc := range cases {
		enc := repo.Encode(nil, tc.data, tc.mode)
		if got := enc[0] == 1; got != tc.compressed {
			t.Errorf("%s: encoding byte %d", tc.name, enc[0])
		}
		if !tc.compressed && len(enc) != len(tc.data)+1 {
			t.Errorf("%s: raw encoding has %d bytes, want %d", tc.name, len(enc), len(tc.data)+1)
		}
		if tc.compressed && len(enc) > len(tc.data)/10 {
			t.Errorf("%s: %d bytes compressed to %d", tc.name, len(tc.data), len(enc))
		}
	}
	// auto keeps compression only when it saves at least 1/32: noise with a
	// little text saves less than that.
	mixed := append(random(5, 100000), []byte(strings.Repeat("a", 2000))...)
	if enc := repo.Encode(nil, mixed, repo.CompressAuto); enc[0] != 0 {
		t.Errorf("auto kept compression saving %d of %d bytes", len(mixed)+1-len(enc), len(mixed))
	}
	if enc := repo.Encode(nil, mixed, repo.CompressMax); enc[0] != 1 {
		t.Errorf("max stored raw")
	}
}

func TestDecodeRejects(t *testing.T) {
	good := repo.Encode(nil, []byte(strings.Repeat("abc", 1000)), repo.CompressMax)
	cases := map[string][]byte{
		"empty":                nil,
		"unknown encoding 2":   {2, 'x'},
		"unknown encoding 255": {255},
		"zstd garbage":         {1, 1, 2, 3, 4, 5, 6, 7, 8},
		"truncated zstd":       good[:len(good)/2],
	}
	for name, enc := range cases {
		if got, err := repo.Decode(nil, enc, 0); err == nil {
			t.Errorf("%s: decoded %d bytes without error", name, len(got))
		}
	}
	// maxSize bounds the output.
	if _, err := repo.Decode(nil, good, 100); err == nil {
		t.Error("decoded 3000 bytes with maxSize 100")
	}
	if got, err := repo.Decode(nil, good, 3000); err != nil || len(got) != 3000 {
		t.Errorf("decode at exactly maxSize: %d bytes, %v", len(got), err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, data := range [][]byte{nil, []byte("x"), []byte(strings.Repeat("fuzz ", 100)), random(6, 300)} {
		for _, mode := range modes {
			enc := repo.Encode(nil, data, mode)
			f.Add(enc)
			for _, n := range []int{0, 1, len(enc) / 2, len(enc) - 1} {
				if n >= 0 && n < len(enc) {
					f.Add(enc[:n])
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, enc []byte) {
		plain, err := repo.Decode(nil, enc, 1<<20)
		if err != nil {
			return
		}
		if len(plain) > 1<<20 {
			t.Fatalf("decoded %d bytes past maxSize", len(plain))
		}
		for _, mode := range modes {
			again, err := repo.Decode(nil, repo.Encode(nil, plain, mode), 0)
			if err != nil || !bytes.Equal(again, plain) {
				t.Fatalf("re-encoded with %s: %v", mode, err)
			}
		}
	})
}

// TestAutoSkipsIncompressible: auto stores random data raw and compresses
// data whose start is random but whose bulk compresses.
func TestAutoSkipsIncompressible(t *testing.T) {
	random := make([]byte, 1<<20)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(random)
	if enc := repo.Encode(nil, random, repo.CompressAuto); enc[0] != 0 || len(enc) != len(random)+1 {
		t.Fatalf("random data: encoding byte %d, %d bytes", enc[0], len(enc))
	}
	mixed := append(random[:64<<10:64<<10], bytes.Repeat([]byte("compressible "), 80000)...)
	if enc := repo.Encode(nil, mixed, repo.CompressAuto); len(enc) > len(mixed)/2 {
		t.Fatalf("mostly compressible data stored in %d of %d bytes", len(enc), len(mixed))
	}
}

// TestDecodeForeignFrames decodes frames of every shape a repository may
// hold, whichever encoder wrote them: the pure-Go encoder's single-shot frames
// (static builds), its streaming frames, which state no content size, and
// frames whose size field is 1, 2 or 4 bytes wide.
func TestDecodeForeignFrames(t *testing.T) {
	for _, n := range []int{1, 200, 300, 70_000, 1 << 20} {
		data := []byte(strings.Repeat("frame ", n/6+1))[:n]
		for _, level := range []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault} {
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level))
			if err != nil {
				t.Fatal(err)
			}
			var stream bytes.Buffer
			enc.Reset(&stream)
			enc.Write(data)
			enc.Close()
			frames := map[string][]byte{
				"single-shot": enc.EncodeAll(data, nil),
				"streaming":   stream.Bytes(),
			}
			for name, frame := range frames {
				got, err := repo.Decode([]byte("pre"), append([]byte{1}, frame...), n)
				if err != nil || !bytes.Equal(got, append([]byte("pre"), data...)) {
					t.Errorf("%d bytes, %v, %s: %d bytes, %v", n, level, name, len(got), err)
				}
				if n == 1 {
					continue // maxSize 0 means the default bound
				}
				if _, err := repo.Decode(nil, append([]byte{1}, frame...), n-1); err == nil {
					t.Errorf("%d bytes, %v, %s: decoded past maxSize %d", n, level, name, n-1)
				}
			}
		}
	}
}

// TestAutoTrustsSignatures: auto stores a small file of a compressed format
// raw without trying, even one that would compress (gzip of stored blocks),
// while max still compresses it and the same bytes without the signature
// are compressed.
func TestAutoTrustsSignatures(t *testing.T) {
	text := []byte(strings.Repeat("a man page, gzipped without compression\n", 500))
	var gz bytes.Buffer
	w, _ := gzip.NewWriterLevel(&gz, gzip.NoCompression)
	w.Write(text)
	w.Close()
	if enc := repo.Encode(nil, gz.Bytes(), repo.CompressAuto); enc[0] != 0 {
		t.Errorf("auto compressed a small gzip file (%d to %d bytes)", gz.Len(), len(enc))
	}
	if enc := repo.Encode(nil, gz.Bytes(), repo.CompressMax); enc[0] != 1 {
		t.Errorf("max stored a compressible gzip file raw")
	}
	plain := append([]byte{0x1f, 0x8c}, gz.Bytes()[2:]...)
	if enc := repo.Encode(nil, plain, repo.CompressAuto); enc[0] != 1 {
		t.Errorf("auto stored compressible data raw without a signature")
	}
	// Above the probes' size the content decides, not the first bytes.
	big := append([]byte{0x1f, 0x8b, 8}, bytes.Repeat(text, 10)...)
	if enc := repo.Encode(nil, big, repo.CompressAuto); enc[0] != 1 {
		t.Errorf("auto stored %d compressible bytes raw for their first three", len(big))
	}
}
