// Merged into @jupyter/builder's config: the shipped notebooks keep their names (plus a content hash, so browsers
// may cache them) under static/notebooks/; tests and people can find them there.
module.exports = {
  output: { assetModuleFilename: 'notebooks/[name].[contenthash:8][ext]' }
};
