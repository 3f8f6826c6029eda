package s3

// SetPartSize lets tests reach multipart uploads with small files.
func SetPartSize(b *Backend, n uint64) { b.partSize = n }
