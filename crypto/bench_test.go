package crypto_test

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"testing"

	"github.com/cairn-backup/cairn/crypto"
)

const benchBlob = 1 << 20

// BenchmarkSeal compares the AEAD cairn uses with AES-256-GCM, the usual
// alternative, on blob-sized input. Both draw a random nonce per object, as
// a repository must.
func BenchmarkSeal(b *testing.B) {
	plain := make([]byte, benchBlob)
	ad := make([]byte, 33)
	if _, err := rand.Read(plain); err != nil {
		b.Fatal(err)
	}
	b.Run("XChaCha20-Poly1305", func(b *testing.B) {
		k := crypto.NewRandomKey()
		dst := make([]byte, 0, benchBlob+crypto.Overhead)
		b.SetBytes(benchBlob)
		for b.Loop() {
			dst = k.Seal(dst[:0], plain, ad)
		}
	})
	b.Run("AES-256-GCM", func(b *testing.B) {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			b.Fatal(err)
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			b.Fatal(err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			b.Fatal(err)
		}
		dst := make([]byte, 0, benchBlob+aead.NonceSize()+aead.Overhead())
		b.SetBytes(benchBlob)
		for b.Loop() {
			dst = dst[:aead.NonceSize()]
			if _, err := rand.Read(dst); err != nil {
				b.Fatal(err)
			}
			dst = aead.Seal(dst, dst, plain, ad)
		}
	})
}

// BenchmarkOpen is the restore side of BenchmarkSeal.
func BenchmarkOpen(b *testing.B) {
	plain := make([]byte, benchBlob)
	if _, err := rand.Read(plain); err != nil {
		b.Fatal(err)
	}
	k := crypto.NewRandomKey()
	sealed := k.Seal(nil, plain, nil)
	dst := make([]byte, 0, benchBlob)
	b.SetBytes(benchBlob)
	for b.Loop() {
		var err error
		if dst, err = k.Open(dst[:0], sealed, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBlobID is keyed BLAKE3-256 of one average-sized blob.
func BenchmarkBlobID(b *testing.B) {
	data := make([]byte, benchBlob)
	if _, err := rand.Read(data); err != nil {
		b.Fatal(err)
	}
	k := crypto.NewRandomKey()
	b.SetBytes(benchBlob)
	for b.Loop() {
		_ = k.BlobID(data)
	}
}
