'use strict';
// 搜索测试的查询与期望：query 的前 within 个结果里必须有 expect 列出的页面。
// search.test.js（排序）与 browser.js（真实浏览器里的搜索框）共用。
exports.QUERIES = [
    { query: '注意力', within: 3, expect: ['part1/attention.html', 'part1/multi-head.html'] },
    { query: '多头注意力', within: 1, expect: ['part1/multi-head.html'] },
    { query: '位置编码', within: 1, expect: ['part1/positional.html'] },
    { query: '低秩', within: 1, expect: ['part2/low-rank.html'] },
    { query: '合并权重', within: 1, expect: ['part2/merge.html'] },
    { query: '梯度', within: 1, expect: ['part0/autodiff.html'] },
    { query: 'LoRA', within: 5, expect: ['part2/index.html', 'part2/lora-linear.html'] },
    { query: 'softmax', within: 5, expect: ['part1/attention.html'] },
    { query: 'dfdx', within: 3, expect: ['part0/index.html'] },
    { query: 'LoRA 合并', within: 3, expect: ['part2/merge.html'] },
];
