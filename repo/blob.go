package repo

import "fmt"

// BlobType separates file content from directory listings.
type BlobType uint8

const (
	DataBlob BlobType = 0
	TreeBlob BlobType = 1
)

func (t BlobType) String() string {
	switch t {
	case DataBlob:
		return "data"
	case TreeBlob:
		return "tree"
	}
	return fmt.Sprintf("blobtype(%d)", uint8(t))
}

// BlobAD is the associated data a blob is sealed with: its type and ID.
func BlobAD(t BlobType, id ID) []byte {
	ad := make([]byte, 33)
	ad[0] = byte(t)
	copy(ad[1:], id[:])
	return ad
}

// PackedBlob says where a blob is stored.
type PackedBlob struct {
	Type      BlobType
	ID        ID
	Pack      ID
	Offset    uint32
	Length    uint32 // stored (sealed) length
	RawLength uint32 // plaintext length
}
