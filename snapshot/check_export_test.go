package snapshot

// ChooseSubset exposes Subset.choose to the tests.
var ChooseSubset = Subset.choose
