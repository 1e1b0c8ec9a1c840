"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-28 19:27:57.109570
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dataset',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset')),
    sa.UniqueConstraint('uri', 'fingerprint', name=op.f('uq_dataset_uri'))
    )
    op.create_table('model',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model')),
    sa.UniqueConstraint('name', name=op.f('uq_model_name'))
    )
    op.create_table('model_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=255), nullable=False),
    sa.Column('spec', sa.String(length=500), nullable=False),
    sa.Column('weights_uri', sa.Text(), nullable=True),
    sa.Column('weights_sha256', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('registry_metadata', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_model_version_model_id_model'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_version')),
    sa.UniqueConstraint('model_id', 'version', name=op.f('uq_model_version_model_id'))
    )
    op.create_table('clustering',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('frozen', sa.Boolean(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('eval_split', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['dataset.id'], name=op.f('fk_clustering_dataset_id_dataset'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_clustering_model_version_id_model_version'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_clustering')),
    sa.UniqueConstraint('key', name=op.f('uq_clustering_key'))
    )
    op.create_table('audit_run',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('clustering_key', sa.String(length=255), nullable=False),
    sa.Column('clustering_id', sa.Integer(), nullable=True),
    sa.Column('config_hash', sa.String(length=64), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('resolved_config', sa.JSON(), nullable=True),
    sa.Column('eval_split', sa.String(length=255), nullable=False),
    sa.Column('train_split', sa.String(length=255), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('timings', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('mean_spearman', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['clustering_id'], ['clustering.id'], name=op.f('fk_audit_run_clustering_id_clustering')),
    sa.ForeignKeyConstraint(['dataset_id'], ['dataset.id'], name=op.f('fk_audit_run_dataset_id_dataset'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_audit_run_model_version_id_model_version'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_run')),
    sa.UniqueConstraint('model_version_id', 'dataset_id', 'config_hash', 'clustering_key', name=op.f('uq_audit_run_model_version_id'))
    )
    op.create_table('cluster',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('clustering_id', sa.Integer(), nullable=False),
    sa.Column('class_name', sa.String(length=255), nullable=False),
    sa.Column('cluster_index', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=300), nullable=False),
    sa.Column('center', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['clustering_id'], ['clustering.id'], name=op.f('fk_cluster_clustering_id_clustering'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cluster')),
    sa.UniqueConstraint('clustering_id', 'class_name', 'cluster_index', name=op.f('uq_cluster_clustering_id'))
    )
    op.create_table('cluster_member',
    sa.Column('cluster_id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.String(length=1000), nullable=False),
    sa.ForeignKeyConstraint(['cluster_id'], ['cluster.id'], name=op.f('fk_cluster_member_cluster_id_cluster'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('cluster_id', 'image_id', name=op.f('pk_cluster_member'))
    )
    op.create_table('run_class',
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('class_index', sa.Integer(), nullable=False),
    sa.Column('class_name', sa.String(length=255), nullable=False),
    sa.Column('clustering_id', sa.Integer(), nullable=False),
    sa.Column('excluded_mosaics', sa.Integer(), nullable=False),
    sa.Column('spearman_score_train_share', sa.Float(), nullable=True),
    sa.Column('notes', sa.JSON(), nullable=False),
    sa.Column('per_image_mosaics', sa.Integer(), nullable=True),
    sa.Column('pearson_logit', sa.Float(), nullable=True),
    sa.Column('spearman_logit', sa.Float(), nullable=True),
    sa.Column('pearson_softmax', sa.Float(), nullable=True),
    sa.Column('spearman_softmax', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['clustering_id'], ['clustering.id'], name=op.f('fk_run_class_clustering_id_clustering')),
    sa.ForeignKeyConstraint(['run_id'], ['audit_run.id'], name=op.f('fk_run_class_run_id_audit_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'class_index', name=op.f('pk_run_class'))
    )
    op.create_table('run_rank_share',
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('mean_train_share', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['audit_run.id'], name=op.f('fk_run_rank_share_run_id_audit_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'rank', name=op.f('pk_run_rank_share'))
    )
    op.create_table('mosaic',
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('pair_i', sa.Integer(), nullable=False),
    sa.Column('pair_j', sa.Integer(), nullable=False),
    sa.Column('image_tl', sa.String(length=1000), nullable=False),
    sa.Column('image_tr', sa.String(length=1000), nullable=False),
    sa.Column('image_bl', sa.String(length=1000), nullable=False),
    sa.Column('image_br', sa.String(length=1000), nullable=False),
    sa.Column('cluster_tl', sa.Integer(), nullable=False),
    sa.Column('cluster_tr', sa.Integer(), nullable=False),
    sa.Column('cluster_bl', sa.Integer(), nullable=False),
    sa.Column('cluster_br', sa.Integer(), nullable=False),
    sa.Column('d', sa.Float(), nullable=True),
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('class_index', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['run_id', 'class_index'], ['run_class.run_id', 'run_class.class_index'], name=op.f('fk_mosaic_run_id_run_class'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('position', 'run_id', 'class_index', name=op.f('pk_mosaic'))
    )
    op.create_table('pair_dominance',
    sa.Column('cluster_i', sa.Integer(), nullable=False),
    sa.Column('cluster_j', sa.Integer(), nullable=False),
    sa.Column('dominance', sa.Float(), nullable=False),
    sa.Column('p_value', sa.Float(), nullable=False),
    sa.Column('p_value_holm', sa.Float(), nullable=False),
    sa.Column('n_mosaics', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('class_index', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['run_id', 'class_index'], ['run_class.run_id', 'run_class.class_index'], name=op.f('fk_pair_dominance_run_id_run_class'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('cluster_i', 'cluster_j', 'run_id', 'class_index', name=op.f('pk_pair_dominance'))
    )
    op.create_table('per_image_score',
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.String(length=1000), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('logit', sa.Float(), nullable=False),
    sa.Column('softmax', sa.Float(), nullable=False),
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('class_index', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['run_id', 'class_index'], ['run_class.run_id', 'run_class.class_index'], name=op.f('fk_per_image_score_run_id_run_class'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('position', 'run_id', 'class_index', name=op.f('pk_per_image_score'))
    )
    op.create_table('run_cluster',
    sa.Column('cluster_index', sa.Integer(), nullable=False),
    sa.Column('cluster_id', sa.Integer(), nullable=False),
    sa.Column('eval_size', sa.Integer(), nullable=False),
    sa.Column('train_count', sa.Integer(), nullable=True),
    sa.Column('train_share', sa.Float(), nullable=True),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('class_index', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['cluster_id'], ['cluster.id'], name=op.f('fk_run_cluster_cluster_id_cluster')),
    sa.ForeignKeyConstraint(['run_id', 'class_index'], ['run_class.run_id', 'run_class.class_index'], name=op.f('fk_run_cluster_run_id_run_class'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('cluster_index', 'run_id', 'class_index', name=op.f('pk_run_cluster'))
    )


def downgrade() -> None:
    op.drop_table('run_cluster')
    op.drop_table('per_image_score')
    op.drop_table('pair_dominance')
    op.drop_table('mosaic')
    op.drop_table('run_rank_share')
    op.drop_table('run_class')
    op.drop_table('cluster_member')
    op.drop_table('cluster')
    op.drop_table('audit_run')
    op.drop_table('clustering')
    op.drop_table('model_version')
    op.drop_table('model')
    op.drop_table('dataset')
